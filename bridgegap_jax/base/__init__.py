"""The base every wing stands on: one-line user errors, files written whole, the device mesh."""
