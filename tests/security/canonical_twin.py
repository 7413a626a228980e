"""The canonical string of request signing read in Python, from protobuf's own proto3 JSON
(`MessageToDict`): the twin that engine_rs's `signed_text` (engine_rs/src/signing.rs), which
the SDK and the server use, must equal for every request type (test_canonical.py). It is the
scheme as clients/signing.py describes it, written the obvious way."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

RESERVED = ("method", "timestamp", "nonce")


def canonical_twin(method: str, request: Message, timestamp_ms: int, nonce: str) -> bytes:
    fields: dict[str, Any] = json_format.MessageToDict(request, preserving_proto_field_name=True)
    for name in RESERVED:
        if name in fields:
            raise ValueError(f"{type(request).__name__} has a field named {name}")
    fields.update(method=method, timestamp=str(timestamp_ms), nonce=nonce)
    parts = []
    for name in sorted(fields):
        value = fields[name]
        if value in ("", None) or value == [] or value == {}:
            continue
        text = (
            value
            if isinstance(value, str)
            else json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        )
        parts.append(f"{name}={text}")
    return "&".join(parts).encode("utf-8")
