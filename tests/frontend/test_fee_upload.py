"""`engine_rs.FeeUpload` (engine_rs/src/upload.rs) reads an upload's messages as the
Python checks it replaced did (tests/frontend/upload_twin.py): for random lines sent in
random messages, the same refusal of a message for its amounts (the first one refused, as
the stream stops there), the same checks over the whole upload, the same columns."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

import engine_rs
from medsettle.v1 import common_pb2, settlement_pb2
from tests.frontend import upload_twin as twin

MAX_LINE_FEN = 1_000_000
I64 = st.integers(-(2**63), 2**63 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
CODES = st.sampled_from(["", "A", "B", "Y0001", "序号", "x" * 64, "y" * 65, "序" * 65])
DATES = st.one_of(st.sampled_from([0, 20260229, 20240229, 20261231, 19000101, 30000101]), I32)
AMOUNTS = st.one_of(st.integers(-10, 2 * MAX_LINE_FEN), I64)


@st.composite
def fee_lines(draw: st.DrawFn) -> settlement_pb2.FeeLine:
    return settlement_pb2.FeeLine(
        feedetl_sn=draw(CODES),
        medins_list_codg=draw(CODES),
        med_list_codg=draw(CODES),
        cnt=draw(st.one_of(st.integers(0, 50_000_000), I64)),
        pric=draw(AMOUNTS),
        det_item_fee_sumamt=draw(AMOUNTS),
        fee_ocur_date=draw(DATES),
        bilg_dr_codg=draw(CODES),
        hosp_appr_flag=draw(st.one_of(st.integers(-1, 3), I32)),
    )


def message(lines: list[settlement_pb2.FeeLine]) -> bytes:
    req = settlement_pb2.UploadFeesRequest(
        header=common_pb2.RequestHeader(msgid="m1", fixmedins_code="H1"), mdtrt_id="M1"
    )
    req.lines.extend(lines)
    return req.SerializeToString()


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(fee_lines(), max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=4),
)
def test_the_engine_reads_the_lines_as_the_python_checks_did(
    lines: list[settlement_pb2.FeeLine], cuts: list[int]
) -> None:
    bounds = sorted({0, len(lines), *(c for c in cuts if c <= len(lines))})
    chunks = [lines[a:b] for a, b in itertools.pairwise(bounds)] or [[]]
    upload = engine_rs.FeeUpload(MAX_LINE_FEN, twin.MAX_VIOLATIONS)
    sent: list[settlement_pb2.FeeLine] = []
    for chunk in chunks:
        got = upload.add(message(chunk))
        assert got == twin.amount_violations(chunk, MAX_LINE_FEN, first=len(sent))
        sent += chunk
        if got:  # the call is refused here; nothing after is read
            return
    assert len(upload) == len(sent)
    assert upload.line_violations == twin.line_violations(sent)
    want = twin.columns(sent)
    for name in ("feedetl_sn", "medins_list_codg", "med_list_codg", "bilg_dr_codg"):
        assert getattr(upload, name) == want[name], name
    assert upload.nums.shape == (len(sent), 5)
    assert upload.nums.tolist() == want["nums"]
