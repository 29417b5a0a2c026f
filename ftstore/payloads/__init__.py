"""Typed payloads: formats ftstore parses strictly before storing them, and describes.

- ``bundle_format`` — the model bundle zip: manifest, typed params snapshot, reading and
  writing (no framework needed).
- ``archive`` — a zip reader with limits, for untrusted archives.
- ``reports`` — conformance snapshots and benchmark baselines, and baseline comparison.
- ``typed`` — detect, validate and describe a payload by artifact type.
"""
