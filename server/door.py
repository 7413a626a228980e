"""The hot methods' requests, kept as their wire bytes (issue 15, bytes in).

A local Settle or CancelSettlement is read once, in the engine (engine_rs/src/door.rs), from
the bytes grpc received: the bounds of its ids and codes (limits.FIELD_MAX, the same
violations `limits.check_ids` names), its header, and the digest idempotency compares
(`common.request_hash`'s). The ledger takes the same bytes, so on the hot path Python never
parses or serialises the message (nor does center mode's Settle, which sends the same bytes
on). Anything else that wants a field (center mode's cancel, the audit record of a refusal)
gets it from the message parsed on first use.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from google.protobuf.message import Message

import engine_rs
from server.errors import ClientError, InvalidArgument, refuse_fields
from server.limits import FIELD_MAX, MAX_VIOLATIONS

_DOOR = engine_rs.Door(FIELD_MAX, MAX_VIOLATIONS)


class Header(NamedTuple):
    """The request header's fields the server reads (common.proto RequestHeader)."""

    msgid: str
    fixmedins_code: str
    opter: str
    opter_name: str
    sign_no: str
    mdtrtarea_admvs: str


_NO_HEADER = Header("", "", "", "", "", "")


class Raw:
    """A request as its wire bytes (`data`), with what the door read from them: the
    `header` and the idempotency `digest`. Any other attribute is the parsed message's
    (parsed on first use)."""

    __slots__ = ("_message", "cls", "data", "digest", "header")

    def __init__(self, cls: type[Message], data: bytes, header: Header, digest: bytes) -> None:
        self.cls = cls
        self.data = data
        self.header = header
        self.digest = digest
        self._message: Message | None = None

    def message(self) -> Any:
        if self._message is None:
            self._message = self.cls.FromString(self.data)
        return self._message

    def SerializeToString(self) -> bytes:
        """The bytes as received (what a signature's canonical string is read from)."""
        return self.data

    @property
    def DESCRIPTOR(self) -> Any:
        return self.cls.DESCRIPTOR

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message(), name)


def admit(cls: type[Message], method: str, data: bytes) -> Raw:
    """`data` as a request of `cls` for `method` (its short name); INVALID_ARGUMENT for
    bytes that are not the message or for ids beyond their bounds."""
    got = _DOOR.admit(cls.DESCRIPTOR.full_name, method, data)
    if isinstance(got, tuple):
        header, digest = got
        return Raw(cls, data, _NO_HEADER if header is None else Header(*header), digest)
    if isinstance(got, str):
        raise ClientError(f"malformed request message: {got}")
    refuse_fields(got)
    raise InvalidArgument("request: refused at the door")  # pragma: no cover - got is non-empty
