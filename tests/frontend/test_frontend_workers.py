"""`medsettle serve --workers N`: several server processes behind one port, and SIGTERM drain.

With `--workers 2` the parent spawns two worker processes, each with its own grpc.aio server
bound to the same port (SO_REUSEPORT) and its own store writer over the one SQLite file.
These tests check, against real servers on loopback:

- two distinct worker PIDs (children of the server process) listen on the one port, and
  connections from fresh channels land on both;
- calls spread over many connections (so over both workers) work end to end: visits
  registered through one connection are settled through another and read back through a
  third, and every settlement is in the database once;
- SIGTERM while a long call is in flight (a 5,000-line StreamFees held open mid-stream)
  lets that call finish with OK and its lines committed, refuses new calls meanwhile, and
  then every process exits with code 0 -- with one worker and with two.

Nothing here measures time: waits are bounded only as a safety net.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import psutil
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import common_pb2, settlement_pb2
from server.demo.localserver import LocalServer
from tests.harness import DAY, EMPLOYEE, INST_A, RETIRED, client, lines, total

if TYPE_CHECKING:
    from psutil._ntuples import pconn

T = TypeVar("T")
SAFETY_S = 30.0  # upper bound of any wait; never an expectation
STREAM_LINES = 5000
CHUNK = 500


def new_msgid() -> str:
    return "T" + uuid.uuid4().hex


def fresh_channel(server: LocalServer) -> grpc.Channel:
    """A channel with its own TCP connection (no subchannel shared with other channels), so
    SO_REUSEPORT may hand it to any worker."""
    return grpc.insecure_channel(
        server.target,
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )


def fresh_client(server: LocalServer, inst: str = INST_A) -> MedsettleClient:
    c = MedsettleClient(
        server.target,
        fixmedins_code=inst,
        opter="cashier01",
        retries=0,
        channel=fresh_channel(server),
        password=server.demo_password(),
    )
    c.sign_in()
    return c


def wait_until(pred: Callable[[], T | None], what: str) -> T:
    """Poll `pred` until it returns something truthy (bounded by SAFETY_S)."""
    deadline = time.monotonic() + SAFETY_S
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def listening_pids(log: Path, port: int) -> set[int]:
    text = log.read_text("utf-8", errors="replace") if log.exists() else ""
    return {int(m) for m in re.findall(rf"listening on 127\.0\.0\.1:{port} pid (\d+)", text)}


def workers_of(server: LocalServer, n: int, log: Path) -> list[psutil.Process]:
    """The n worker processes: the PIDs the log says listen on the port, each a child of
    the server process (or the server process itself with one worker)."""
    assert server.proc is not None
    pids = wait_until(
        lambda: p if len(p := listening_pids(log, server.port)) >= n else None,
        f"{n} 'listening on' lines in the log",
    )
    assert len(pids) == n, f"expected {n} distinct worker PIDs in the log, got {sorted(pids)}"
    parent = psutil.Process(server.proc.pid)
    family = {parent.pid} | {c.pid for c in parent.children(recursive=True)}
    assert pids <= family, f"listening PIDs {sorted(pids)} are not the server's {sorted(family)}"
    return [psutil.Process(pid) for pid in sorted(pids)]


def tcp(proc: psutil.Process, port: int, status: str) -> list[pconn]:
    return [
        c
        for c in proc.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == status
    ]


def peer_ports(proc: psutil.Process, port: int) -> set[int]:
    """Client-side ports of the connections this worker has accepted on `port`."""
    return {c.raddr.port for c in tcp(proc, port, psutil.CONN_ESTABLISHED) if c.raddr}


def local_port_of(channel_ports_before: set[int], port: int) -> int:
    """The local port of the one connection this test process opened since the snapshot."""
    me = psutil.Process()

    def new_port() -> int | None:
        now = {
            c.laddr.port
            for c in me.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        }
        fresh = now - channel_ports_before
        return fresh.pop() if len(fresh) == 1 else None

    return wait_until(new_port, "the new connection's local port")


def my_ports(port: int) -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port
    }


def settle_request(
    c: MedsettleClient, mdtrt_id: str, psn_no: str, amount: int
) -> settlement_pb2.SettleRequest:
    return settlement_pb2.SettleRequest(
        header=c.header(new_msgid()),
        mdtrt_id=mdtrt_id,
        psn_no=psn_no,
        medfee_sumamt=amount,
        acct_used_flag=True,
    )


# ---------------------------------------------------------------------------- two workers
def test_two_workers_listen_on_one_port_and_both_take_connections(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = LocalServer(tmp_path / "fe.db", workers=2, log=log).start()
    try:
        workers = workers_of(server, 2, log)
        assert server.proc is not None
        assert all(w.pid != server.proc.pid for w in workers), "workers are separate processes"
        for w in workers:
            assert tcp(w, server.port, psutil.CONN_LISTEN), f"worker {w.pid} does not listen"
        # Fresh connections until each worker has accepted at least one of ours.
        clients: list[MedsettleClient] = []
        served: dict[int, int] = {}
        try:
            while len(served) < 2:
                assert len(clients) < 64, f"64 connections all went to workers {served}"
                before = my_ports(server.port)
                c = fresh_client(server)
                clients.append(c)
                assert c.ping(b"x").payload == b"x"
                mine = local_port_of(before, server.port)
                owner = [w.pid for w in workers if mine in peer_ports(w, server.port)]
                assert len(owner) == 1, f"connection {mine} is held by workers {owner}"
                served[owner[0]] = served.get(owner[0], 0) + 1
        finally:
            for c in clients:
                c.close()
        assert set(served) == {w.pid for w in workers}
    finally:
        assert server.stop() == 0


def test_calls_spread_across_workers_work_end_to_end(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = LocalServer(tmp_path / "fe.db", workers=2, log=log).start()
    n = 12
    clients = [fresh_client(server) for _ in range(n)]
    try:
        workers = workers_of(server, 2, log)
        per_worker = {w.pid: len(peer_ports(w, server.port)) for w in workers}
        assert all(per_worker.values()), f"not every worker got a connection: {per_worker}"
        # Visit i is registered through client i, its fees uploaded through client i+1,
        # settled through client i+2 and read back through client i+3: across workers.
        psns = [RETIRED, EMPLOYEE]
        visits = []
        for i in range(n):
            psn = psns[i % 2]
            v = clients[i].register(
                psn.psn_no,
                insutype=psn.insutype,
                med_type=11,
                begndate=DAY,
                ipt_otp_no=f"MZ{i:04d}",
                dise_codg=["J06.9"],
                msgid=new_msgid(),
            )
            ls = lines(10, seed=700 + i)
            up = clients[(i + 1) % n].upload_fees(v.mdtrt_id, ls, msgid=new_msgid())
            assert up.visit_line_count == 10
            visits.append((v.mdtrt_id, psn.psn_no, total(ls)))
        results: dict[int, settlement_pb2.SettleResponse] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(n)

        def settle(i: int) -> None:
            mdtrt_id, psn_no, amount = visits[i]
            c = clients[(i + 2) % n]
            try:
                barrier.wait(SAFETY_S)
                results[i] = c.call(
                    c.settlement.Settle, settle_request(c, mdtrt_id, psn_no, amount)
                )
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=settle, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SAFETY_S)
        assert not errors, errors
        assert len(results) == n
        for i, resp in results.items():
            info = resp.setlinfo
            assert info.state == common_pb2.SETTLED
            assert info.mdtrt_id == visits[i][0]
            assert info.medfee_sumamt == visits[i][2]
            back = clients[(i + 3) % n].get_settlement(info.setl_id).setlinfo
            assert back == info
        setl_ids = {r.setlinfo.setl_id for r in results.values()}
        assert len(setl_ids) == n
    finally:
        for c in clients:
            c.close()
        assert server.stop() == 0
    conn = sqlite3.connect(server.db)
    try:
        rows = conn.execute("SELECT setl_id, state FROM settlements").fetchall()
        assert sorted(rows) == sorted((s, 1) for s in setl_ids)
        states = conn.execute("SELECT COUNT(*) FROM visits WHERE state = 'settled'").fetchone()[0]
        assert states == n
    finally:
        conn.close()
    text = log.read_text("utf-8", errors="replace")
    for w in workers:
        assert f"medsettle worker {w.pid} stopped cleanly" in text


# ---------------------------------------------------------------------------- SIGTERM drain
class HeldStream:
    """A StreamFees of STREAM_LINES lines whose first message is sent and then held until
    `release` is set: a long call the server has accepted and not finished."""

    def __init__(self, server: LocalServer, seed: int) -> None:
        self.client = fresh_client(server)
        v = self.client.register(
            EMPLOYEE.psn_no,
            insutype=EMPLOYEE.insutype,
            med_type=11,
            begndate=DAY,
            ipt_otp_no=f"MZ9{seed:04d}",
            dise_codg=["J06.9"],
            msgid=new_msgid(),
        )
        self.mdtrt_id = v.mdtrt_id
        self.lines = lines(STREAM_LINES, seed=seed)
        self.header = self.client.header(new_msgid())
        self.first_sent = threading.Event()
        self.release = threading.Event()
        self.response: settlement_pb2.UploadFeesResponse | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _messages(self) -> Iterator[settlement_pb2.UploadFeesRequest]:
        for i in range(0, STREAM_LINES, CHUNK):
            msg = settlement_pb2.UploadFeesRequest(lines=self.lines[i : i + CHUNK])
            if i == 0:
                msg.header.CopyFrom(self.header)
                msg.mdtrt_id = self.mdtrt_id
            yield msg
            if i == 0:
                # grpc asks for the next message only once the first one is written.
                self.first_sent.set()
                if not self.release.wait(SAFETY_S):
                    raise RuntimeError("never released")

    def _run(self) -> None:
        try:
            self.response = self.client.settlement.StreamFees(self._messages(), timeout=60)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def start(self) -> None:
        self.thread.start()
        assert self.first_sent.wait(SAFETY_S)
        # A unary call on the same connection, answered: the stream's first frames (sent
        # before it on the same connection) have reached the server.
        assert self.client.ping(b"in flight").payload == b"in flight"

    def finish(self) -> settlement_pb2.UploadFeesResponse:
        self.thread.join(SAFETY_S)
        assert not self.thread.is_alive(), "the held stream never finished"
        assert self.error is None, f"in-flight StreamFees failed: {self.error}"
        assert self.response is not None
        return self.response


def refused(server: LocalServer) -> bool:
    """Whether a new call on a new connection is refused right now."""
    with fresh_channel(server) as ch:
        stub = ping_callable(ch)
        try:
            stub(settlement_pb2.PingRequest(payload=b"new"), timeout=2)
        except grpc.RpcError as err:
            assert isinstance(err, grpc.Call)
            # A stopping server refuses a new call as UNAVAILABLE, or as CANCELLED when the
            # call got in just as the listener closed.
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err
            return True
        return False


def ping_callable(
    ch: grpc.Channel,
) -> grpc.UnaryUnaryMultiCallable[settlement_pb2.PingRequest, settlement_pb2.PingResponse]:
    return ch.unary_unary(
        "/medsettle.v1.Settlement/Ping",
        request_serializer=settlement_pb2.PingRequest.SerializeToString,
        response_deserializer=settlement_pb2.PingResponse.FromString,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_inflight_stream_finish_then_exits_zero(tmp_path: Path, workers: int) -> None:
    log = tmp_path / "server.log"
    server = LocalServer(tmp_path / "fe.db", workers=workers, log=log).start()
    held: list[HeldStream] = []
    stop_code: list[int] = []
    try:
        procs = workers_of(server, workers, log)
        # One held stream per worker at least: open streams on fresh connections until
        # every worker has one in flight.
        holding: set[int] = set()
        while holding != {p.pid for p in procs}:
            assert len(held) < 32, f"32 connections all went to workers {holding}"
            before = my_ports(server.port)
            h = HeldStream(server, seed=len(held) + 1)
            held.append(h)
            h.start()
            mine = local_port_of(before, server.port)
            holding |= {p.pid for p in procs if mine in peer_ports(p, server.port)}

        stopper = threading.Thread(target=lambda: stop_code.append(server.stop(SAFETY_S)))
        stopper.start()
        # SIGTERM is on its way: every worker soon closes its listener, while the streams are
        # open. Probing before that can hit the instant a listener closes, when the kernel
        # drops the SYN and the client resends it after 1 s and then 3 s -- a probe's own
        # timeout, not an answer -- so the probes wait until no worker listens.
        wait_until(
            lambda: not any(tcp(p, server.port, psutil.CONN_LISTEN) for p in procs),
            "every worker to close its listener after SIGTERM",
        )
        for _ in range(5):
            assert refused(server), "a new call was accepted after SIGTERM"
        assert all(h.thread.is_alive() for h in held), "held streams ended before release"
        # A new call on a connection that is still open (it carries an in-flight call).
        with pytest.raises(MedsettleError) as exc_info:
            held[0].client.ping(b"late")
        assert exc_info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

        for h in held:
            h.release.set()
        for h in held:
            resp = h.finish()
            assert resp.mdtrt_id == h.mdtrt_id
            assert resp.line_count == STREAM_LINES
            assert resp.visit_line_count == STREAM_LINES
            assert resp.det_item_fee_sumamt == total(h.lines)
        stopper.join(SAFETY_S)
        assert not stopper.is_alive()
        assert stop_code == [0], f"server exit code {stop_code}"
    finally:
        for h in held:
            h.release.set()
            h.client.close()
        if server.proc is not None:
            server.kill()
    for p in procs:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE, f"{p.pid} still runs"
    text = log.read_text("utf-8", errors="replace")
    for p in procs:
        assert f"medsettle worker {p.pid} stopped cleanly" in text
    # The drained calls were committed: every line of every held stream is in the file.
    conn = sqlite3.connect(server.db)
    try:
        for h in held:
            n = conn.execute(
                "SELECT COUNT(*) FROM fee_lines f JOIN visits v ON v.id = f.visit_id"
                " WHERE v.mdtrt_id = ?",
                (h.mdtrt_id,),
            ).fetchone()[0]
            assert n == STREAM_LINES
            row = conn.execute(
                "SELECT method, ref FROM idempotency WHERE msgid = ?", (h.header.msgid,)
            ).fetchone()
            assert row == ("StreamFees", h.mdtrt_id)
    finally:
        conn.close()


def test_sigterm_with_no_calls_exits_zero_and_refuses_afterwards(tmp_path: Path) -> None:
    """Single worker, idle: SIGTERM stops it cleanly (exit 0); afterwards nothing answers."""
    log = tmp_path / "server.log"
    server = LocalServer(tmp_path / "fe.db", log=log).start()
    c = client(server)
    try:
        assert c.ping(b"a").payload == b"a"
    finally:
        c.close()
    (proc,) = workers_of(server, 1, log)
    assert server.stop() == 0
    assert refused(server)
    assert f"medsettle worker {proc.pid} stopped cleanly" in log.read_text("utf-8")
