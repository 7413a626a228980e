"""The `...Bytes` messages of center.proto are the same wire as the messages they stand
for, each settle and answer kept as its encoded bytes (center_link.py sends and receives
them; the center reads the real ones): what one side encodes, the other reads to the same
messages, byte for byte, for messages filled at random."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from medsettle.v1 import center_pb2
from tests.wire.random_messages import fill


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(0, 4))
def test_a_batch_of_encoded_settles_is_read_as_the_batch(data: st.DataObject, n: int) -> None:
    header = center_pb2.NodeHeader()
    fill(data, header)
    calls = []
    for _ in range(n):
        call = center_pb2.CenterSettleRequest()
        fill(data, call)
        calls.append(call)
    sent = center_pb2.CenterSettleBatchBytes(
        header=header, calls=[c.SerializeToString() for c in calls]
    ).SerializeToString()
    read = center_pb2.CenterSettleBatch.FromString(sent)
    assert read.header == header
    assert list(read.calls) == calls
    assert read.SerializeToString() == sent


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(0, 4))
def test_a_batch_answer_is_read_with_each_answer_as_its_bytes(data: st.DataObject, n: int) -> None:
    resp = center_pb2.CenterSettleBatchResponse()
    for _ in range(n):
        out = resp.outcomes.add()
        fill(data, out)
    read = center_pb2.CenterSettleBatchResponseBytes.FromString(resp.SerializeToString())
    assert len(read.outcomes) == n
    for got, out in zip(read.outcomes, resp.outcomes, strict=True):
        assert (got.code, got.message) == (out.code, out.message)
        # an answer absent on the wire reads as empty bytes, the empty message's encoding
        assert got.answer == out.answer.SerializeToString()
        assert center_pb2.CenterSettleResponse.FromString(got.answer) == out.answer
