"""The ground floor: what every room needs and no room owns.

- :mod:`osteomics.core.files`: durable, atomic file writes (temporary file, fsync, rename,
  fsync of the folder) and the writable-folder check.
- :mod:`osteomics.core.provenance`: one provenance record, one JSON shape, for every command.
- :mod:`osteomics.core.errors`: errors that are not any one room's.
- :mod:`osteomics.core.plugins`: the plugin contract (``Plugin``) and discovery by kind, one
  entry-point group per kind, so that a room finds its plugins without importing the
  ``plugins`` layer above it.

Rooms (``wsi``, ``radiology``, ``fusion``) import from here; this package imports no room.
"""
