"""The canonical string a signature covers, as the engine computes it for the SDK and the
server (engine_rs `signed_text`), equals the Python reading of the scheme
(canonical_twin.py, over protobuf's `MessageToDict`) for every request message of the wire
contract, filled at random through its descriptor: text with quotes, backslashes, control
characters and CJK, integers at their limits, enums known and unknown, nested and repeated
messages, timestamps, bytes. A second-language client that follows the scheme signs what
the server verifies."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.signing import canonical
from tests.security.canonical_twin import canonical_twin
from tests.wire.random_messages import REQUESTS, TEXT, fill


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
    fill(data, msg)
    method = f"/medsettle.v1.X/{cls.DESCRIPTOR.name}"
    assert canonical(method, msg, ts, nonce) == canonical_twin(method, msg, ts, nonce)


def test_a_type_the_engine_does_not_know_is_an_error() -> None:
    import engine_rs

    with pytest.raises(ValueError, match="no message type"):
        engine_rs.signed_text("medsettle.v1.Nothing", b"", "/m", 0, "nonce123")
