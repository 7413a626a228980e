"""The canonical string a signature covers, as the engine computes it for the SDK and the
server (engine_rs `signed_text`), equals the Python reading of the scheme
(canonical_twin.py, over protobuf's `MessageToDict`) for every request message of the wire
contract, filled at random through its descriptor: text with quotes, backslashes, control
characters and CJK, integers at their limits, enums known and unknown, nested and repeated
messages, timestamps, bytes. A second-language client that follows the scheme signs what
the server verifies."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.signing import canonical
from medsettle.v1 import catalog_pb2, center_pb2, reconciliation_pb2, settlement_pb2
from tests.security.canonical_twin import canonical_twin

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


def _value(data: st.DataObject, field: Any) -> Any:
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


def _fill(data: st.DataObject, msg: Message, depth: int = 0) -> None:
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
                _fill(data, child, depth + 1)
        elif repeated:
            getattr(msg, field.name).extend(_value(data, field) for _ in range(n))
        else:
            setattr(msg, field.name, _value(data, field))


def test_every_request_type_is_covered() -> None:
    names = {cls.DESCRIPTOR.name for cls in REQUESTS}
    assert {"SettleRequest", "CancelSettlementRequest", "CenterSettleRequest"} <= names
    assert len(REQUESTS) > 20


@pytest.mark.parametrize("cls", REQUESTS, ids=lambda c: c.DESCRIPTOR.name)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), ts=st.integers(0, 2**53), nonce=TEXT)
def test_the_engine_writes_what_the_scheme_says(
    cls: type[Message], data: st.DataObject, ts: int, nonce: str
) -> None:
    msg = cls()
    _fill(data, msg)
    method = f"/medsettle.v1.X/{cls.DESCRIPTOR.name}"
    assert canonical(method, msg, ts, nonce) == canonical_twin(method, msg, ts, nonce)


def test_a_type_the_engine_does_not_know_is_an_error() -> None:
    import engine_rs

    with pytest.raises(ValueError, match="no message type"):
        engine_rs.signed_text("medsettle.v1.Nothing", b"", "/m", 0, "nonce123")
