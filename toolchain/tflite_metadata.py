"""Provenance inside a .tflite file: a named metadata entry whose buffer holds JSON.

TFLite's schema has a `metadata` list (name -> buffer index) that every interpreter
ignores, so an entry added there travels with the artifact without changing what it
computes. The converter already writes two entries (`min_runtime_version`,
`CONVERSION_METADATA`); ours sits beside them under PROVENANCE_KEY.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ModelLoadError

PROVENANCE_KEY = "edge_toolchain_provenance"
FILE_IDENTIFIER = b"TFL3"


def add_metadata(flatbuffer: bytes, values: dict[str, Any], name: str = PROVENANCE_KEY) -> bytes:
    """A copy of `flatbuffer` with `values` stored as JSON under metadata `name` (replaced if present)."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    payload = json.dumps(values, sort_keys=True, separators=(",", ":")).encode("utf-8")
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers = list(model.buffers or [])
    model.metadata = [m for m in (model.metadata or []) if _decode(m.name) != name]
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + len(payload) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def read_metadata(flatbuffer: bytes) -> dict[str, Any]:
    """Every metadata entry of the file: JSON entries decoded, text entries as strings.

    Binary entries (the converter's CONVERSION_METADATA) are reported by size only.
    """
    from ai_edge_litert import schema_py_generated as fb

    if len(flatbuffer) < 8 or flatbuffer[4:8] != FILE_IDENTIFIER:
        raise ModelLoadError("not a TFLite flatbuffer (missing the 'TFL3' identifier)")
    model = fb.Model.GetRootAs(flatbuffer, 0)
    found: dict[str, Any] = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        name = _decode(entry.Name())
        index = int(entry.Buffer())
        if not 0 <= index < model.BuffersLength():
            raise ModelLoadError(f"metadata '{name}' points at missing buffer {index}")
        buffer = model.Buffers(index)
        data = bytes(buffer.DataAsNumpy().tobytes()) if buffer.DataLength() else b""
        found[name] = _decode_payload(data)
    return found


def _decode(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def _decode_payload(data: bytes) -> Any:
    text = data.rstrip(b"\x00")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        return {"binary_bytes": len(data)}
    if decoded.startswith("{"):
        try:
            return json.loads(decoded)
        except json.JSONDecodeError:
            pass
    if decoded.isprintable():
        return decoded
    return {"binary_bytes": len(data)}
