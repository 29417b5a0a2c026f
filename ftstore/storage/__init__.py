"""Where artifact files live. ``local`` holds the crash-safe primitives of a directory
store: temporary file, fsync, rename, fsync of the directory."""
