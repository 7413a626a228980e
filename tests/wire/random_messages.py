"""Request messages of the wire contract filled at random through their descriptors (for
the tests that hold an engine reading of arbitrary requests to its Python twin): text with
quotes, backslashes, control characters and CJK, integers at their limits, enums known and
unknown, nested and repeated messages, timestamps, bytes."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from medsettle.v1 import catalog_pb2, center_pb2, reconciliation_pb2, settlement_pb2

F = FieldDescriptor
REQUESTS = sorted(
    (
        getattr(module, name)
        for module in (settlement_pb2, catalog_pb2, reconciliation_pb2, center_pb2)
        for name, d in module.DESCRIPTOR.message_types_by_name.items()
        if name.endswith(("Request", "Batch", "Chunk"))
    ),
    key=lambda cls: cls.DESCRIPTOR.full_name,
)
TEXT = st.text(
    st.characters(codec="utf-8")
    | st.sampled_from(['"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", "收", "=", "&"]),
    max_size=12,
)
LIMITS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def value_of(data: st.DataObject, field: Any) -> Any:
    t = field.type
    if t in LIMITS:
        lo, hi = LIMITS[t]
        return data.draw(st.sampled_from([0, 1, lo, hi]) | st.integers(lo, hi))
    if t == F.TYPE_BOOL:
        return data.draw(st.booleans())
    if t == F.TYPE_STRING:
        return data.draw(TEXT)
    if t == F.TYPE_BYTES:
        return data.draw(st.binary(max_size=12))
    if t == F.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return data.draw(st.sampled_from(known) | st.integers(0, 50))
    raise AssertionError(f"{field.full_name}: no strategy for type {t}")


def fill(data: st.DataObject, msg: Message, depth: int = 0) -> None:
    desc = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Timestamp":
        msg.seconds = data.draw(st.integers(-62135596800, 253402300799))  # type: ignore[attr-defined]
        msg.nanos = data.draw(  # type: ignore[attr-defined]
            st.sampled_from([0, 1_000_000, 123_456_000, 999_999_999]) | st.integers(0, 999_999_999)
        )
        return
    for field in desc.fields:
        if field.containing_oneof is not None and msg.WhichOneof(field.containing_oneof.name):
            continue
        if not data.draw(st.booleans()):
            continue
        repeated = field.is_repeated
        n = data.draw(st.integers(0, 3)) if repeated else 1
        if field.type == F.TYPE_MESSAGE:
            if depth > 3:
                continue
            for _ in range(n):
                child = getattr(msg, field.name).add() if repeated else getattr(msg, field.name)
                if not repeated:
                    child.SetInParent()
                fill(data, child, depth + 1)
        elif repeated:
            getattr(msg, field.name).extend(value_of(data, field) for _ in range(n))
        else:
            setattr(msg, field.name, value_of(data, field))
