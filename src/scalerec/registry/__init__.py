"""Model registry: immutable versioned model artefacts, stages, promotion gate, rollback, retention."""

from scalerec.registry.manifest import Manifest
from scalerec.registry.registry import STAGES, LoadedVersion, ModelVersion, Registry, read_manifest

__all__ = ["STAGES", "LoadedVersion", "Manifest", "ModelVersion", "Registry", "read_manifest"]
