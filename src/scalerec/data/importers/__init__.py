"""Bulk import of events, users and items from CSV/TSV/Parquet/JSON-lines/MovieLens files, streamed in chunks.

The stages, one module each: ``sources`` (readers, header, encoding), ``mapping`` (``--map``,
``--set``, timestamp formats), ``report`` (rejects, quarantine, staging), ``presets`` (the
registry that dataset plug-ins fill) and ``run`` (``import_file``, which strings them together).
"""

from scalerec.data.coerce import pack_map, parse_number, parse_timestamps
from scalerec.data.importers.mapping import map_columns, resolve_mapping
from scalerec.data.importers.presets import (
    Preset,
    PresetEntry,
    preset_entry,
    preset_help,
    preset_names,
    register_preset,
    resolve_preset,
)
from scalerec.data.importers.report import MESSAGE_REJECTS, REPORTED_REJECTS, ImportReport, RejectedRow
from scalerec.data.importers.run import KINDS, ON_ERROR, Kind, OnError, Progress, import_file
from scalerec.data.importers.sources import (
    FORMATS,
    MAX_BLOCK_BYTES,
    READ_BLOCK_BYTES,
    SourceSpec,
    detect_format,
    iter_source,
    source_spec,
)

__all__ = [
    "FORMATS", "KINDS", "MAX_BLOCK_BYTES", "MESSAGE_REJECTS", "ON_ERROR", "READ_BLOCK_BYTES", "REPORTED_REJECTS",
    "ImportReport", "Kind", "OnError", "Preset", "PresetEntry", "Progress", "RejectedRow", "SourceSpec",
    "detect_format", "import_file", "iter_source", "map_columns", "pack_map", "parse_number", "parse_timestamps",
    "preset_entry", "preset_help", "preset_names", "register_preset", "resolve_mapping", "resolve_preset",
    "source_spec",
]
