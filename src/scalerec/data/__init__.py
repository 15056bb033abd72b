"""Data layer: entities and validation, event log, catalogue store, importers, generator, matrices."""
