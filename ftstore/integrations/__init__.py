"""Training-framework integrations (optional extras):

- ``lightning`` — :class:`FtstoreCheckpointIO`, a PyTorch Lightning ``CheckpointIO`` under
  which every Lightning checkpoint flow behaves as with Lightning's own: the file is at the
  path Lightning chose (a hard link to the stored payload), loads verify and repair first,
  and a checkpoint beyond repair falls back to the newest good one with a warning.
- ``keras`` — :class:`FtstoreCheckpoint`, a Keras callback that saves the whole training
  state (weights and optimizer variables, HDF5) through a :class:`~ftstore.CheckpointManager`,
  and :func:`restore_training` that brings it back for ``fit(initial_epoch=...)``.
"""
