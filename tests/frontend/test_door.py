"""The door of the hot methods (server/door.py over engine_rs/src/door.rs) reads what the
Python reading it replaces reads, for every request type of the wire contract filled at
random: the same violations of the ids' bounds in the same order (`limits.check_ids`), the
same header, and the same idempotency digest (`common.request_hash`), so a retry of a
request first answered before the door existed still meets its stored answer."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsettle.v1 import common_pb2, settlement_pb2
from server import door, limits
from server.common import request_hash
from server.errors import ClientError
from tests.wire.random_messages import REQUESTS, fill


def _python_reading(cls: type[Message], method: str, data: bytes) -> tuple[object, ...]:
    msg = cls.FromString(data)
    try:
        limits.check_ids(msg)
    except ClientError as exc:
        return ("refused", exc.code, exc.violations)
    header = getattr(msg, "header", None)
    fields = None
    if isinstance(header, common_pb2.RequestHeader):
        fields = tuple(getattr(header, f) for f in door.Header._fields)
    return ("passed", fields, request_hash(method, msg))


def _door_reading(cls: type[Message], method: str, data: bytes) -> tuple[object, ...]:
    try:
        raw = door.admit(cls, method, data)
    except ClientError as exc:
        return ("refused", exc.code, exc.violations)
    field = cls.DESCRIPTOR.fields_by_name.get("header")
    has_header = field is not None and field.message_type is common_pb2.RequestHeader.DESCRIPTOR
    return ("passed", tuple(raw.header) if has_header else None, raw.digest)


@pytest.mark.parametrize("cls", REQUESTS, ids=lambda c: c.DESCRIPTOR.name)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_door_reads_what_python_reads(cls: type[Message], data: st.DataObject) -> None:
    msg = cls()
    fill(data, msg)
    wire = msg.SerializeToString()
    method = cls.DESCRIPTOR.name.removesuffix("Request")
    assert _door_reading(cls, method, wire) == _python_reading(cls, method, wire)


def _settle(**header: str) -> settlement_pb2.SettleRequest:
    return settlement_pb2.SettleRequest(
        header=common_pb2.RequestHeader(msgid="M-1", fixmedins_code="H1", opter="op", **header),
        mdtrt_id="V1",
        medfee_sumamt=1234,
    )


def test_more_violations_than_the_cap_stop_at_it() -> None:
    req = settlement_pb2.UploadFeesRequest(header=common_pb2.RequestHeader(msgid="M"))
    for i in range(30):
        req.lines.add(feedetl_sn=f"{i}\x00")
    wire = req.SerializeToString()
    got = _door_reading(settlement_pb2.UploadFeesRequest, "UploadFees", wire)
    assert got == _python_reading(settlement_pb2.UploadFeesRequest, "UploadFees", wire)
    assert got[0] == "refused" and len(got[2]) == limits.MAX_VIOLATIONS  # type: ignore[arg-type]


def test_the_digest_is_the_same_across_a_new_sign_in_and_fields_the_server_does_not_know() -> None:
    first = door.admit(
        settlement_pb2.SettleRequest, "Settle", _settle(sign_no="S1").SerializeToString()
    )
    again = door.admit(
        settlement_pb2.SettleRequest, "Settle", _settle(sign_no="S2").SerializeToString()
    )
    assert first.digest == again.digest == request_hash("Settle", _settle())
    # a newer client's field (number 99, a varint) rides along: Python keeps it, so does the door
    wire = _settle(sign_no="S1").SerializeToString() + b"\x98\x06\x01"
    parsed = settlement_pb2.SettleRequest.FromString(wire)
    assert door.admit(settlement_pb2.SettleRequest, "Settle", wire).digest == request_hash(
        "Settle", parsed
    )
    assert door.admit(settlement_pb2.SettleRequest, "Settle", wire).digest != first.digest


def test_bytes_that_are_not_the_message_are_invalid_argument() -> None:
    with pytest.raises(ClientError) as err:
        door.admit(settlement_pb2.SettleRequest, "Settle", b"\x0a\x05\x01")
    assert err.value.code.name == "INVALID_ARGUMENT"
    assert err.value.message.startswith("malformed request message: ")


def test_any_other_field_is_the_parsed_message_s() -> None:
    raw = door.admit(
        settlement_pb2.SettleRequest, "Settle", _settle(sign_no="S").SerializeToString()
    )
    assert raw.header.sign_no == "S" and raw.header.msgid == "M-1"
    assert raw.mdtrt_id == "V1" and raw.medfee_sumamt == 1234
    assert raw.message() == _settle(sign_no="S")
