"""Checkpoints for training loops: ``checkpoints`` (the manager: numbered steps,
retention, restore-newest-valid, background protection). Framework plug-ins that use it
live in ``ftstore.integrations``."""
