"""The ledger (engine_rs.Ledger) reads through the store connection's own handle: what it
reads is what Python's sqlite3 reads on that connection, inside its open transaction; it
attaches only to a store connection of this process's one SQLite library, and never reads
through a closed one. (Kill -9 loops with the settle path reading through it and Python
writing: tests/frontend/test_frontend_crash.py.)"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine_rs
from medsettle.v1 import settlement_pb2
from server.columns import unpack_strings
from server.frontend.store import line_results
from server.frontend.store.sqlite import Connection, connect, init_db, ledger_of
from tests.conftest import catalog_from_rows, lines_from_rows, policy_from_rules

FLAT_POLICY = policy_from_rules(
    {
        "deductible": {"kind": "per_visit", "by_admission_fen": [100_000]},
        "basic": {"band_basis": "fee", "bands": [{"from_fen": 0, "ratio_bp": 8000}]},
    }
)
VISIT = engine_rs.Visit(treatment=2, date=20260601, age=40, sex=1)
LINE_COLUMNS = (
    "feedetl_sn, medins_list_codg, med_list_codg, cnt, pric, det_item_fee_sumamt,"
    " fee_ocur_date, hosp_appr_flag"
)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    db = str(tmp_path / "f.db")
    init_db(db)
    c = connect(db)
    c.execute("PRAGMA foreign_keys=OFF")  # lines without their visit, for reading only
    yield c
    c.close()


def _insert(c: sqlite3.Connection, visit_id: int, rows: list[tuple[object, ...]]) -> None:
    c.executemany(
        "INSERT INTO fee_lines (visit_id, feedetl_sn, seq, medins_list_codg, med_list_codg,"
        " cnt, pric, det_item_fee_sumamt, fee_ocur_date, bilg_dr_codg, hosp_appr_flag, msgid)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?, 'm')",
        [(visit_id, r[0], seq, *r[1:]) for seq, r in enumerate(rows)],
    )


text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
money = st.integers(-(2**63), 2**63 - 1)
line = st.tuples(text, text, text, money, money, money, money, money)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(line, max_size=20, unique_by=lambda r: r[0]))
def test_fee_lines_are_what_sqlite3_reads(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[object, ...]]
) -> None:
    db = str(tmp_path_factory.mktemp("ledger") / "f.db")
    init_db(db)
    c = connect(db)
    try:
        c.execute("PRAGMA foreign_keys=OFF")
        c.execute("BEGIN")
        _insert(c, 7, rows)
        _insert(c, 8, [("other", "H", "", 1, 1, 1, 0, 0)])
        cols, sns, _ = c.ledger.fee_lines(7)  # inside the open transaction
        want = c.execute(
            f"SELECT {LINE_COLUMNS} FROM fee_lines WHERE visit_id = 7 ORDER BY seq"
        ).fetchall()
        assert sns == [r[0] for r in want]
        assert unpack_strings(cols["medins_list_codg"]) == [r[1] for r in want]
        assert unpack_strings(cols["med_list_codg"]) == [r[2] for r in want]
        numbers = (
            cols["cnt"],
            cols["pric"],
            cols["det_item_fee_sumamt"],
            cols["fee_date"],
            cols["hosp_appr_flag"],
        )
        for k, column in enumerate(numbers, start=3):
            assert column.dtype == np.int64
            assert column.tolist() == [r[k] for r in want]
        c.execute("ROLLBACK")
        assert c.ledger.fee_lines(7)[1] == []  # the rolled-back lines are gone for both
    finally:
        c.close()


def test_the_digest_follows_the_lines(conn: Connection) -> None:
    _insert(conn, 1, [("a", "H1", "", 10_000, 5, 5, 0, 0), ("b", "H2", "X", 20_000, 3, 6, 0, 1)])
    ledger = ledger_of(conn)
    first = ledger.fee_lines(1)[2]
    assert len(first) == 32 and ledger.fee_lines(1)[2] == first
    conn.execute("UPDATE fee_lines SET hosp_appr_flag = 2 WHERE feedetl_sn = 'b'")
    assert ledger.fee_lines(1)[2] != first


def test_it_attaches_only_to_a_store_connection(tmp_path: Path) -> None:
    with pytest.raises(engine_rs.EngineError, match=r"not a sqlite3\.Connection"):
        engine_rs.Ledger(object())  # type: ignore[arg-type]
    plain = sqlite3.connect(str(tmp_path / "p.db"))
    try:
        with pytest.raises(engine_rs.EngineError, match="subclass"):
            engine_rs.Ledger(plain)
    finally:
        plain.close()
    with pytest.raises(TypeError):
        ledger_of(sqlite3.connect(":memory:"))


def test_it_never_reads_through_a_closed_connection(tmp_path: Path) -> None:
    db = str(tmp_path / "f.db")
    init_db(db)
    c = connect(db)
    ledger = c.ledger
    assert ledger.connection is c
    c.close()  # closes the ledger first
    with pytest.raises(engine_rs.EngineError, match="closed"):
        ledger.fee_lines(1)
    other = connect(db)
    kept = other.ledger
    del other  # the connection is gone without close(): the ledger refuses, never crashes
    import gc

    gc.collect()
    with pytest.raises(engine_rs.EngineError, match=r"gone|closed"):
        kept.fee_lines(1)


def test_one_copy_of_sqlite_in_the_process(conn: Connection) -> None:
    # The ledger attached, so `_sqlite3` resolves SQLite to the extension's copy; the version
    # both report is the same too.
    assert conn.ledger is not None
    lib = ctypes.CDLL("libsqlite3.so.0")
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    assert lib.sqlite3_libversion().decode() == sqlite3.sqlite_version


@settings(max_examples=40, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.sampled_from(["H-A1", "H-B1", "H-C1", "NOPE"]), st.integers(1, 5), text),
        min_size=0,
        max_size=12,
    )
)
def test_the_line_results_blob_is_the_python_encoding(
    picks: list[tuple[str, int, str]],
) -> None:
    catalog = catalog_from_rows(
        [{"code": "A1"}, {"code": "B1", "chrgitm_lv": 2}, {"code": "C1", "chrgitm_lv": 3}]
    )
    rows = [
        {"medins_list_codg": code, "cnt": units * 10_000, "pric": 250, "amount": units * 250}
        for code, units, _ in picks
    ]
    columns = lines_from_rows(rows)
    lines, _ = engine_rs.preprocess(catalog, FLAT_POLICY, columns, VISIT)
    sns = [f"{k:03d}{sn}" for k, (_, _, sn) in enumerate(picks)]
    amounts = columns["det_item_fee_sumamt"]
    ints = (
        np.stack(
            [
                lines.chrgitm_lv,
                lines.fee_category,
                amounts,
                lines.fulamt_ownpay_amt,
                lines.overlmt_amt,
                lines.preselfpay_amt,
                lines.inscp_scp_amt,
                lines.flags,
            ],
            axis=1,
        )
        .astype(np.int64)
        .reshape(len(picks), 8)
    )
    want = line_results.encode(sns, catalog.codes(lines.item), ints)
    assert engine_rs.line_results_blob(catalog, lines, sns, amounts) == want


def _results_in_python(
    sns: list[str],
    amounts: list[int],
    results: engine_rs.LineResults,
    codes: list[str],
) -> list[settlement_pb2.FeeLineResult]:
    """How upload_fees built the results in Python before they were encoded in Rust."""
    return [
        settlement_pb2.FeeLineResult(
            feedetl_sn=sn,
            det_item_fee_sumamt=amt,
            fulamt_ownpay_amt=ful,
            overlmt_amt=over,
            preselfpay_amt=pre,
            inscp_scp_amt=inscp,
            chrgitm_lv=lv,
            med_chrgitm_type=cat,
            med_list_codg=code,
            flags=fl,
        )
        for sn, amt, ful, over, pre, inscp, lv, cat, code, fl in zip(
            sns,
            amounts,
            results.fulamt_ownpay_amt.tolist(),
            results.overlmt_amt.tolist(),
            results.preselfpay_amt.tolist(),
            results.inscp_scp_amt.tolist(),
            results.chrgitm_lv.tolist(),
            results.fee_category.tolist(),
            codes,
            results.flags.tolist(),
            strict=True,
        )
    ]


@settings(max_examples=40, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.sampled_from(["H-A1", "H-B1", "H-C1", "NOPE"]), st.integers(1, 5), text),
        max_size=12,
    ),
    head=st.tuples(text, st.integers(0, 100), st.integers(-(2**40), 2**40)),
)
def test_upload_results_are_the_python_encoding(
    picks: list[tuple[str, int, str]], head: tuple[str, int, int]
) -> None:
    catalog = catalog_from_rows(
        [{"code": "A1"}, {"code": "B1", "chrgitm_lv": 2}, {"code": "C1", "chrgitm_lv": 3}]
    )
    columns = lines_from_rows(
        [
            {"medins_list_codg": code, "cnt": units * 10_000, "pric": 250, "amount": units * 250}
            for code, units, _ in picks
        ]
    )
    lines, _ = engine_rs.preprocess(catalog, FLAT_POLICY, columns, VISIT)
    sns = [f"{k:03d}{sn}" for k, (_, _, sn) in enumerate(picks)]
    amounts = columns["det_item_fee_sumamt"]
    mdtrt_id, count, total = head
    rest = settlement_pb2.UploadFeesResponse(
        mdtrt_id=mdtrt_id, line_count=count, visit_line_count=count, det_item_fee_sumamt=total
    )
    want = settlement_pb2.UploadFeesResponse()
    want.CopyFrom(rest)
    want.results.extend(_results_in_python(sns, amounts.tolist(), lines, catalog.codes(lines.item)))
    got = rest.SerializeToString() + engine_rs.fee_line_results(catalog, lines, sns, amounts)
    assert got == want.SerializeToString()


NODE = engine_rs.LedgerNode("01", 480, bytes(32), 1, bytes(32))
CALLER = ("H1", 3, "440100", "op", "clerk", "/medsettle.v1.Settlement/Settle")


def _mixed_batch() -> list[tuple[Any, ...]]:
    """A batch of calls that each refuse on their own, one of every kind."""
    catalog = catalog_from_rows([{"code": "X1"}])
    unknown = settlement_pb2.SettleRequest(mdtrt_id="M-none", psn_no="P1").SerializeToString()
    no_setl = settlement_pb2.CancelSettlementRequest(setl_id="S-none").SerializeToString()
    refdata = (FLAT_POLICY, catalog)
    kept = (b"", 2026, "emp", b"", b"")
    return [
        ("Settle", b"\xff\xff\xff", b"h1", 1, CALLER, refdata, None, None),
        ("Settle", unknown, b"h2", 1, CALLER, refdata, None, None),
        ("Settle", unknown, b"h3", 1, CALLER, None, None, kept),
        ("CancelSettlement", no_setl, b"h4", 1, CALLER, None, None, None),
        ("CancelSettlement", b"\xff\xff\xff", b"h5", 1, CALLER, None, None, None),
    ]


def _on_commit_thread(ledger: engine_rs.Ledger, calls: list[tuple[Any, ...]]) -> list[Any]:
    """`calls` through the ledger's own commit thread, collected as the store does once
    its descriptor turns readable."""
    ledger.start_batch(NODE, calls)
    fd = ledger.ready_fd
    assert fd is not None
    while True:
        select.select([fd], [], [], 30)
        done = ledger.finished_batch()
        if done is not None:
            return done


@pytest.mark.parametrize("where", ["inline", "commit thread"])
def test_a_batch_goes_on_past_a_request_that_does_not_decode(conn: Connection, where: str) -> None:
    """A call of a batch whose bytes are not a SettleRequest is that call's refusal
    (INVALID_ARGUMENT naming the request); the calls beside it are settled, kept, cancelled
    or refused on their own (here: no such visit, no such settlement), and the batch itself
    does not fail: run inline (`settle_batch`) or on the ledger's commit thread alike."""
    conn.execute("BEGIN")
    if where == "inline":
        out = conn.ledger.settle_batch(NODE, _mixed_batch())
    else:
        out = _on_commit_thread(conn.ledger, _mixed_batch())
    conn.execute("ROLLBACK")
    assert len(out) == 5
    bad, missing, not_kept, no_such, bad_cancel = out
    for b in (bad, bad_cancel):
        assert isinstance(b, engine_rs.Refused) and b.code == "INVALID_ARGUMENT"
        assert b.field == "request" and b.reason is not None
        assert b.reason.startswith("malformed request message")
    assert isinstance(missing, engine_rs.Refused) and missing.code == "NOT_FOUND"
    assert missing.message == "mdtrt_id: no visit M-none at this institution"
    # center mode's keep of the same visit: the same refusal
    assert isinstance(not_kept, engine_rs.Refused) and not_kept.message == missing.message
    assert isinstance(no_such, engine_rs.Refused) and no_such.code == "NOT_FOUND"
    assert no_such.message == "setl_id: no settlement S-none at this institution"


def test_the_commit_thread_finishes_a_batch_while_the_loop_holds_the_gil(
    conn: Connection,
) -> None:
    """The batch runs and its outcome waits without the GIL: with a switch interval that
    never asks this thread to let go, a thread that needed the GIL back would never finish,
    and this loop (which only asks the ledger, never releasing the GIL) would hit its
    deadline. One batch at a time: a second start before the first is collected is refused,
    and the ledger's thread ends with `close()`."""
    conn.execute("BEGIN")
    ledger = conn.ledger
    assert ledger.ready_fd is None and ledger.finished_batch() is None
    threads = _commit_threads()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        ledger.start_batch(NODE, _mixed_batch())
        with pytest.raises(engine_rs.EngineError, match="a batch is in flight already"):
            ledger.start_batch(NODE, _mixed_batch())
        deadline = time.monotonic() + 60
        done = None
        while done is None and time.monotonic() < deadline:
            done = ledger.finished_batch()
    finally:
        sys.setswitchinterval(interval)
    assert done is not None, "the batch did not finish while this thread held the GIL"
    assert [type(d) for d in done] == [engine_rs.Refused] * 5
    assert ledger.finished_batch() is None  # collected once
    again = _on_commit_thread(ledger, _mixed_batch())
    assert [str(d) for d in again] == [str(d) for d in done]
    conn.execute("ROLLBACK")
    assert _commit_threads() == threads + 1
    ledger.close()
    assert _commit_threads() == threads


def _commit_threads() -> int:
    """This process's ledger commit threads, as the kernel names them (not Python's)."""
    tasks = Path("/proc/self/task").iterdir()
    return sum((t / "comm").read_text().strip() == "ledger-commit" for t in tasks)


def _taken_elsewhere(path: str) -> bool:
    """Whether an flock on `path` is held by another open file (this probe's fails)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.parametrize("commits", [True, False])
def test_the_commit_thread_gives_the_write_turn_back_once_the_commit_succeeds(
    conn: Connection, tmp_path: Path, commits: bool
) -> None:
    """With `unlock_fd`, the write turn's flock is free as soon as the batch's COMMIT
    succeeds, before the loop collects the outcome; after a failed COMMIT (here: no
    transaction open) it stays held, for the store to release after rolling back."""
    lock = str(tmp_path / "turn.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(engine_rs.EngineError, match="unlock_fd without commit"):
            conn.ledger.start_batch(NODE, [], False, fd)
        if commits:
            conn.execute("BEGIN IMMEDIATE")
        conn.ledger.start_batch(NODE, _mixed_batch(), True, fd)
        ready = conn.ledger.ready_fd
        assert ready is not None
        assert select.select([ready], [], [], 30)[0], "the batch did not finish"
        assert _taken_elsewhere(lock) is not commits
        if commits:
            assert len(conn.ledger.finished_batch() or []) == 5
            assert not conn.in_transaction
        else:
            with pytest.raises(sqlite3.OperationalError):
                conn.ledger.finished_batch()
    finally:
        os.close(fd)
