"""Training-framework integrations (optional extras):

- ``lightning`` — :class:`FtstoreCheckpointIO`, a PyTorch Lightning ``CheckpointIO`` plugin
  that stores every checkpoint as an ftstore artifact and verifies/repairs it on load.
- ``keras`` — :class:`FtstoreCheckpoint`, a Keras callback that saves weights through a
  :class:`~ftstore.CheckpointManager`, and :func:`restore_weights` to resume from it.
"""
