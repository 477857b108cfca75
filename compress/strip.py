"""Stripping the strings out of a .tflite flatbuffer (model description, subgraph and tensor names,
signature defs), as TensorFlow's ``flatbuffer_utils.strip_strings`` does, with weight buffers
16-byte aligned; and the ``strip`` stage that asks the exporters for it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ._base import ExportOnly, Quantization, StageError, stage_check

__all__ = ["STRIP_NOTE", "Strip", "buffer_offsets", "strip_tflite"]

#: buffer data alignment the TFLite schema asks for (``force_align: 16``); TFLite Micro reads
#: weights and biases in place from the array. Python flatbuffers ignores ``force_align`` (its
#: vectors are only 4-byte aligned, by the length prefix), as does the TF 2.21 converter's output
#: here; packing to 16 costs < 16 bytes per buffer.
_ALIGN = 16

STRIP_NOTE = "strings stripped (description, subgraph/tensor names, signature defs): {saved:,} bytes saved"


def strip_tflite(data: bytes) -> bytes:
    """``data`` without its non-essential strings; operator codes (custom op names) and metadata
    names stay, so LiteRT (by tensor index) and TFLite Micro still run it.

    Same object-API round trip as ``tensorflow.lite.tools.flatbuffer_utils`` (read, clear,
    re-pack), through LiteRT's schema so TensorFlow is not imported, with 16-byte buffers.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    if any(getattr(b, "offset", 0) for b in model.buffers or []):
        # > 2 GB models keep buffers outside the flatbuffer; re-packing them is not supported here.
        raise StageError("strip: the model stores buffers outside the flatbuffer (> 2 GB); not stripped.")
    model.description = None
    model.signatureDefs = None
    for graph in model.subgraphs or []:
        graph.name = None
        for tensor in graph.tensors or []:
            tensor.name = None
    model.buffers = [_AlignedBuffer(b) for b in model.buffers or []]
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class _AlignedBuffer:
    """A ``BufferT`` whose data vector is packed 16-byte aligned."""

    def __init__(self, buffer: Any) -> None:
        self.data = None if buffer.data is None else bytes(bytearray(buffer.data))

    def Pack(self, builder: Any) -> int:  # noqa: N802 - flatbuffers' object API name
        from ai_edge_litert import schema_py_generated as fb

        vector = None
        if self.data is not None:
            builder.StartVector(1, len(self.data), _ALIGN)
            builder.head = builder.head - len(self.data)
            builder.Bytes[builder.head : builder.head + len(self.data)] = self.data
            vector = builder.EndVector()
        fb.BufferStart(builder)
        if vector is not None:
            fb.BufferAddData(builder, vector)
        return fb.BufferEnd(builder)


def buffer_offsets(data: bytes) -> list[int]:
    """File offsets of every non-empty buffer's data (to check alignment)."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(bytearray(data), 0)
    out = []
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.DataLength():
            out.append(buf._tab.Vector(buf._tab.Offset(4)))
    return out


@dataclass(frozen=True)
class Strip(ExportOnly):
    """Export option: ``strip`` (= ``strip:drop``) removes the strings from every .tflite and
    TFLite Micro file exported after it (float ones too); ``strip:keep`` keeps them, also in int8
    and ``tflm`` files (stripped by default). The model itself is unchanged."""

    name: ClassVar[str] = "strip"
    main_arg: ClassVar[str | None] = "strings"

    strings: str = "drop"

    def __post_init__(self) -> None:
        stage_check(
            self.strings in ("drop", "keep"), self.name, "strings must be 'drop' or 'keep'", self.strings
        )

    def next_quantization(self, current: Quantization) -> Quantization:
        return replace(current, strip=self.strings == "drop")
