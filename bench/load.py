"""The load kit (issue 5): HIS traffic of a chosen shape against a medsettle front-end, with
the server's own `Ping` as the baseline, latency from HDR histograms, and the books checked
at the end.

    .venv/bin/python -m bench.load --spawn --workers 2 --duration 30            # closed loop
    .venv/bin/python -m bench.load --spawn --rate 800 --duration 60             # open loop
    .venv/bin/python -m bench.load --target 10.0.0.5:50051 --institution H44010100001 ...

Each visit is what a HIS does: register, upload its fee lines (an inpatient stay streams
them and pre-settles first), settle; a share of settles is sent twice with the same msgid
(the retry must get the first answer byte for byte) and a share is cancelled. `--rate`
runs an open loop: visits start on a Poisson schedule whatever the server does, and each
call's latency counts from the moment it was due, so a stall is not hidden (coordinated
omission). Without it a closed loop keeps `--concurrency` visits in flight. `--clients`
processes share the load. `--persons N` loads a generated population of N persons through
the admin RPC first; `--catalog N` imports a generated catalog of N items as a new version
with the institution's item master drawn from it (`--his-items`), and `--policy FILE` puts a
policy in force, so the engine works on reference data of the size under test. The report
(`--json`) has the figures and a timeline; `--plot` draws throughput and latency over time.

The books: every settlement this run acknowledged (by its msgid prefix) is at the server in
the state the run left it, with the amounts it was answered with, and none more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from hdrh.histogram import HdrHistogram

import engine_rs
from bench import operators
from clients.reconcile import today
from clients.signing import (
    HMAC,
    SM2,
    AioSigningInterceptor,
    Signer,
    SigningInterceptor,
)
from medsettle.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    reconciliation_pb2,
    reconciliation_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer, free_port
from server.demo.synth.catalog import make_catalog
from server.demo.visit import fee_lines
from server.security import certs
from server.security.signing import InstitutionKey, new_sm2_secret, write_keys

OPERATOR = "load"  # the run's operator: settles, cancels, loads reference data, checks books
US_MAX = 120_000_000  # histograms hold 1 us .. 120 s
POPULATION_FIRST = 1_000_000  # generated persons are numbered from here, clear of the demo's
CATALOG_SEED = 11  # a generated catalog differs from the demo's (seed 2026)


@dataclass
class Shape:
    """What the generated traffic looks like."""

    inpatient_share: float = 0.02
    out_lines: tuple[int, int] = (5, 20)
    in_lines: tuple[int, int] = (200, 5000)
    cancel_rate: float = 0.02
    retry_rate: float = 0.05
    stream_chunk: int = 1000


@dataclass(frozen=True)
class Security:
    """How the kit reaches the server: TLS with the institution's certificate (cert, key,
    CA files) and, with `sign_key` (its SM2 secret, or its HMAC-SM3 secret with
    `sign_type` HMAC), every call signed; its operator signs in with `password`."""

    tls: tuple[str, str, str] | None = None
    sign_key: bytes = b""
    sign_type: str = SM2
    password: str = ""

    def sign_in(self, header: common_pb2.RequestHeader) -> settlement_pb2.SignInRequest:
        return settlement_pb2.SignInRequest(header=header, password=self.password)

    def signer(self) -> Signer | None:
        return Signer(self.sign_type, self.sign_key) if self.sign_key else None

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is None:
            return None
        cert, key, ca = (Path(p).read_bytes() for p in self.tls)
        return grpc.ssl_channel_credentials(ca, key, cert)

    def channel(self, target: str, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        creds = self._credentials()
        ch = (
            grpc.secure_channel(target, creds, options=options)
            if creds is not None
            else grpc.insecure_channel(target, options=options)
        )
        signer = self.signer()
        if signer is not None:
            ch = grpc.intercept_channel(ch, SigningInterceptor(signer))
        return ch

    def aio_channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        creds = self._credentials()
        signer = self.signer()
        icpt = [AioSigningInterceptor(signer)] if signer is not None else None
        if creds is not None:
            return grpc.aio.secure_channel(target, creds, options=options, interceptors=icpt)
        return grpc.aio.insecure_channel(target, options=options, interceptors=icpt)


@dataclass
class Job:
    target: str
    institution: str
    run_id: str
    proc: int
    persons: list[tuple[str, int]]
    shape: Shape
    duration: float
    concurrency: int  # closed loop: visits in flight in this process
    rate: float  # open loop: visits started per second by this process (0: closed loop)
    kind: str  # visits | ping
    begndate: int
    prepared: int = 0  # visits registered and uploaded first; then only their Settle is timed
    items: tuple[demo_data.HisItem, ...] | None = None  # the item master (None: the demo's)
    security: Security = field(default_factory=Security)


@dataclass
class Outcome:
    """One client process's results (histograms encoded for the trip home)."""

    settles: int = 0
    visits: int = 0
    pings: int = 0
    retries_identical: int = 0
    retries_different: int = 0
    cancels: int = 0
    # Cancels the server refused because a later settlement of the person relied on the
    # accumulators (cancel newest first): the settlement stands, as the books expect.
    cancels_refused: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_details: dict[str, str] = field(default_factory=dict)  # the first of each kind
    settled: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # live, amounts
    cancelled: list[str] = field(default_factory=list)
    hist: dict[str, bytes] = field(default_factory=dict)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (done at, latency s)
    first_settle: bytes = b""  # a settled request, for h2load to replay
    elapsed: float = 0.0


def first_line(path: str | None) -> str:
    """The first line of a password file; "" without one."""
    if not path:
        return ""
    lines = Path(path).read_text("utf-8").splitlines()
    return lines[0] if lines else ""


def _hist() -> HdrHistogram:
    return HdrHistogram(1, US_MAX, 3)


class Client:
    """One process's calls: raw stubs over several connections, latencies by RPC."""

    def __init__(self, job: Job, progress: Any) -> None:
        self.job = job
        self.progress = progress
        self.out = Outcome()
        self.hists: dict[str, HdrHistogram] = {}
        self.seq = 0
        self.busy: set[str] = set()  # persons with a stay open (one inpatient stay each)
        self.rng = np.random.default_rng(job.proc + 17)
        self.sign_no = ""
        self.stage = ""
        self.todo: Iterator[tuple[settlement_pb2.SettleRequest, str]] | None = None
        # Prepared Settles signed before the clock starts (the HIS's signing is not the
        # server's cost); a retry is signed afresh, with a new nonce, as a HIS would.
        self.presigned: dict[str, tuple[tuple[str, str], ...]] = {}
        self.exhausted = False

    def msgid(self, what: str) -> str:
        self.seq += 1
        return f"{self.job.run_id}-{self.job.proc}-{what}{self.seq}"

    def header(self, msgid: str = "") -> common_pb2.RequestHeader:
        return common_pb2.RequestHeader(
            msgid=msgid, fixmedins_code=self.job.institution, opter=OPERATOR, sign_no=self.sign_no
        )

    def record(self, rpc: str, seconds: float) -> None:
        h = self.hists.get(rpc)
        if h is None:
            h = self.hists[rpc] = _hist()
        h.record_value(max(1, min(US_MAX, int(seconds * 1e6))))

    def error(self, rpc: str, err: grpc.RpcError) -> None:
        code = err.code().name if hasattr(err, "code") else "UNKNOWN"
        key = f"{rpc} {code}"
        self.out.errors[key] = self.out.errors.get(key, 0) + 1
        if key not in self.out.error_details and hasattr(err, "details"):
            self.out.error_details[key] = str(err.details())

    async def timed(self, rpc: str, call: Any, request: Any, t0: float | None = None) -> Any:
        start = time.perf_counter() if t0 is None else t0
        resp = await call(request, timeout=60)
        self.record(rpc, time.perf_counter() - start)
        return resp

    async def visit(self, stub: Any, due: float | None) -> None:
        """One HIS visit; `due` is when the open loop scheduled it (latency counts from it)."""
        if self.todo is not None:
            return await self.settle_prepared(stub, due)
        shape = self.job.shape
        inpatient = self.rng.random() < shape.inpatient_share
        free = [p for p in self.job.persons if p[0] not in self.busy] if inpatient else []
        if inpatient and not free:
            inpatient = False
        psn_no, insutype = (
            free[int(self.rng.integers(len(free)))]
            if inpatient
            else self.job.persons[int(self.rng.integers(len(self.job.persons)))]
        )
        lo, hi = shape.in_lines if inpatient else shape.out_lines
        n = int(self.rng.integers(lo, hi + 1))
        if inpatient:
            self.busy.add(psn_no)
        stage = "Register"
        try:
            reg = await self.timed(
                "Register",
                stub.Register,
                settlement_pb2.RegisterRequest(
                    header=self.header(self.msgid("R")),
                    psn_no=psn_no,
                    insutype=insutype,
                    med_type=21 if inpatient else 11,
                    begndate=self.job.begndate,
                    ipt_otp_no=f"L{self.seq}",
                    dise_codg=["I21.9"] if inpatient else [],
                ),
                due,
            )
            lines = fee_lines(
                self.job.institution,
                n,
                int(self.rng.integers(1 << 30)),
                self.job.begndate,
                self.job.items,
            )
            stage = "StreamFees" if inpatient else "UploadFees"
            if inpatient:
                head = self.msgid("S")
                chunks = [
                    settlement_pb2.UploadFeesRequest(
                        header=self.header(head) if i == 0 else None,
                        mdtrt_id=reg.mdtrt_id,
                        lines=lines[i : i + shape.stream_chunk],
                    )
                    for i in range(0, n, shape.stream_chunk)
                ]
                t = time.perf_counter()
                await stub.StreamFees(iter(chunks), timeout=60)
                self.record("StreamFees", time.perf_counter() - t)
            else:
                await self.timed(
                    "UploadFees",
                    stub.UploadFees,
                    settlement_pb2.UploadFeesRequest(
                        header=self.header(self.msgid("U")), mdtrt_id=reg.mdtrt_id, lines=lines
                    ),
                )
            amount = sum(ln.det_item_fee_sumamt for ln in lines)
            settle = settlement_pb2.SettleRequest(
                header=self.header(self.msgid("T")),
                mdtrt_id=reg.mdtrt_id,
                psn_no=psn_no,
                medfee_sumamt=amount,
                acct_used_flag=bool(self.rng.random() < 0.5),
            )
            if inpatient:
                stage = "PreSettle"
                await self.timed(stage, stub.PreSettle, settle)
            stage = "Settle"
            await self.settle(stub, settle, psn_no, inpatient, None)
            self.out.visits += 1
        except grpc.RpcError as err:
            self.error(f"{self.stage if stage == 'Settle' else stage}", err)
        finally:
            self.busy.discard(psn_no)

    async def settle(
        self,
        stub: Any,
        settle: settlement_pb2.SettleRequest,
        psn_no: str,
        inpatient: bool,
        due: float | None,
    ) -> None:
        """Settle, maybe retry it with the same msgid, maybe cancel it and void the visit;
        a failure raises with `self.stage` naming the call."""
        shape = self.job.shape
        self.stage = "Settle"
        t = time.perf_counter() if due is None else due
        md = self.presigned.pop(settle.header.msgid, None)
        raw = await stub.Settle(settle, timeout=60, metadata=md)
        latency = time.perf_counter() - t
        self.record("Settle", latency)
        self.record("Settle inpatient" if inpatient else "Settle outpatient", latency)
        self.out.timeline.append((time.perf_counter(), latency))
        info = settlement_pb2.SettleResponse.FromString(raw).setlinfo
        if not self.out.first_settle:
            self.out.first_settle = settle.SerializeToString()
        self.out.settles += 1
        self.progress.value += 1
        self.out.settled[info.setl_id] = (
            info.medfee_sumamt,
            info.fund_pay_sumamt,
            info.psn_cash_pay,
        )
        if self.rng.random() < shape.retry_rate:  # the same msgid again
            self.stage = "Settle (retry)"
            again = await self.timed("Settle (retry)", stub.Settle, settle)
            if again == raw:
                self.out.retries_identical += 1
            else:
                self.out.retries_different += 1
        if self.rng.random() < shape.cancel_rate:
            self.stage = "CancelSettlement"
            try:
                await self.timed(
                    "CancelSettlement",
                    stub.CancelSettlement,
                    settlement_pb2.CancelSettlementRequest(
                        header=self.header(self.msgid("C")), setl_id=info.setl_id
                    ),
                )
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                self.out.cancels_refused += 1  # the person settled again meanwhile
                return
            self.out.cancelled.append(info.setl_id)
            self.out.cancels += 1
            self.stage = "CancelRegistration"  # the HIS voids the visit too
            await self.timed(
                self.stage,
                stub.CancelRegistration,
                settlement_pb2.CancelRegistrationRequest(
                    header=self.header(self.msgid("V")), mdtrt_id=settle.mdtrt_id, psn_no=psn_no
                ),
            )

    async def settle_prepared(self, stub: Any, due: float | None) -> None:
        """Only the Settle of a visit registered and uploaded before the clock started."""
        assert self.todo is not None
        nxt = next(self.todo, None)
        if nxt is None:
            self.exhausted = True
            return
        req, psn_no = nxt
        try:
            await self.settle(stub, req, psn_no, False, due)
            self.out.visits += 1
        except grpc.RpcError as err:
            self.error(self.stage, err)

    async def prepare(self, stubs: list[Any]) -> None:
        """Register and upload this process's `prepared` outpatient visits (not timed)."""
        out: list[tuple[settlement_pb2.SettleRequest, str]] = []
        sem = asyncio.Semaphore(32)
        lo, hi = self.job.shape.out_lines

        async def one(i: int) -> None:
            psn_no, insutype = self.job.persons[int(self.rng.integers(len(self.job.persons)))]
            lines = fee_lines(
                self.job.institution,
                int(self.rng.integers(lo, hi + 1)),
                int(self.rng.integers(1 << 30)),
                self.job.begndate,
                self.job.items,
            )
            async with sem:
                st = stubs[i % len(stubs)]
                reg = await st.Register(
                    settlement_pb2.RegisterRequest(
                        header=self.header(self.msgid("R")),
                        psn_no=psn_no,
                        insutype=insutype,
                        med_type=11,
                        begndate=self.job.begndate,
                        ipt_otp_no=f"P{i}",
                    ),
                    timeout=60,
                )
                await st.UploadFees(
                    settlement_pb2.UploadFeesRequest(
                        header=self.header(self.msgid("U")), mdtrt_id=reg.mdtrt_id, lines=lines
                    ),
                    timeout=60,
                )
            out.append(
                (
                    settlement_pb2.SettleRequest(
                        header=self.header(self.msgid("T")),
                        mdtrt_id=reg.mdtrt_id,
                        psn_no=psn_no,
                        medfee_sumamt=sum(ln.det_item_fee_sumamt for ln in lines),
                        acct_used_flag=bool(self.rng.random() < 0.5),
                    ),
                    psn_no,
                )
            )

        await asyncio.gather(*(one(i) for i in range(self.job.prepared)))
        signer = self.job.security.signer()
        if signer is not None:
            for req, _ in out:
                md = signer.metadata("/medsettle.v1.Settlement/Settle", req)
                self.presigned[req.header.msgid] = tuple(md)
        self.todo = iter(out)

    async def run(self) -> Outcome:
        job = self.job
        async with contextlib.AsyncExitStack() as stack:
            stubs = []
            for _ in range(4):  # connections: SO_REUSEPORT spreads connections over workers
                ch = await stack.enter_async_context(
                    job.security.aio_channel(
                        job.target, options=[("grpc.use_local_subchannel_pool", 1)]
                    )
                )
                stubs.append(_raw_settle_stub(ch))
            signed = await stubs[0].SignIn(
                job.security.sign_in(self.header(self.msgid("I"))), timeout=30
            )
            self.sign_no = settlement_pb2.SignInResponse.FromString(signed).sign_no
            if job.prepared:
                await self.prepare(stubs)
            start = time.perf_counter()
            stop_at = start + job.duration
            if job.kind == "ping":
                await asyncio.gather(
                    *(self._pings(stubs[w % 4], stop_at) for w in range(job.concurrency))
                )
            elif job.rate > 0:
                await self._open_loop(stubs, start, stop_at)
            else:
                await asyncio.gather(
                    *(self._closed(stubs[w % 4], stop_at) for w in range(job.concurrency))
                )
            self.out.elapsed = time.perf_counter() - start
        self.out.hist = {k: h.encode() for k, h in self.hists.items()}
        self.out.timeline = [(t - start, lat) for t, lat in self.out.timeline]
        return self.out

    async def _pings(self, stub: Any, stop_at: float) -> None:
        req = settlement_pb2.PingRequest()
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            try:
                await stub.Ping(req, timeout=10)
            except grpc.RpcError as err:
                self.error("Ping", err)
                continue
            self.record("Ping", time.perf_counter() - t)
            self.out.pings += 1
            self.progress.value += 1

    async def _closed(self, stub: Any, stop_at: float) -> None:
        while time.perf_counter() < stop_at and not self.exhausted:
            await self.visit(stub, None)

    async def _open_loop(self, stubs: list[Any], start: float, stop_at: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        due = start
        i = 0
        while due < stop_at and not self.exhausted:
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(self.visit(stubs[i % 4], due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            due += float(self.rng.exponential(1.0 / self.job.rate))
        if tasks:
            await asyncio.gather(*tasks)


def _raw_settle_stub(ch: grpc.aio.Channel) -> Any:
    """The Settlement stub with answers left as bytes (a retry's bytes are compared)."""
    stub = settlement_pb2_grpc.SettlementStub(ch)
    for name in ("Settle", "SignIn"):
        setattr(
            stub,
            name,
            ch.unary_unary(
                f"/medsettle.v1.Settlement/{name}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=None,
            ),
        )
    return stub


_PROGRESS: Any = None


def _init(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress


def _run_job(job: Job) -> Outcome:
    return asyncio.run(Client(job, _PROGRESS).run())


def run_phase(jobs: list[Job], label: str, quiet: bool = False) -> list[Outcome]:
    """The jobs in as many processes, with a progress line on stderr."""
    ctx = multiprocessing.get_context("spawn")
    progress = ctx.Value("l", 0, lock=False)
    done = threading.Event()

    def show() -> None:
        t0 = time.perf_counter()
        total = jobs[0].duration
        while not done.wait(1.0):
            el = time.perf_counter() - t0
            bar = "#" * int(30 * min(1.0, el / total))
            print(
                f"\r{label:>6} [{bar:<30}] {el:5.0f}/{total:.0f} s {progress.value:>9,} calls"
                f" {progress.value / max(el, 1e-9):8,.0f}/s",
                end="",
                file=sys.stderr,
                flush=True,
            )
        if not quiet:
            print(file=sys.stderr)

    shower = threading.Thread(target=show, daemon=True)
    if not quiet:
        shower.start()
    try:
        with ctx.Pool(len(jobs), initializer=_init, initargs=(progress,)) as pool:
            return pool.map(_run_job, jobs)
    finally:
        done.set()


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed), as it goes in an HTTP/2 DATA frame."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(
    target: str, method: str, message: bytes, duration: float, clients: int, streams: int
) -> dict[str, Any]:
    """Drive one RPC with Debian's h2load (nghttp2-client), the same prebuilt request every
    time: what a generator that costs next to nothing per call sees."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as body:
        body.write(grpc_frame(message))
        body.flush()
        out = subprocess.run(
            [
                "h2load",
                f"--duration={duration:g}",
                f"--warm-up-time={min(1.0, duration / 5):g}",
                f"--clients={clients}",
                f"--max-concurrent-streams={streams}",
                "--threads=1",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"--data={body.name}",
                f"http://{target}/medsettle.v1.Settlement/{method}",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 120,
            check=False,
        )
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out.stdout)
    ok = re.search(r"status codes: (\d+) 2xx", out.stdout)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"h2load failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    return {"per_s": float(m.group(1)), "http_2xx": int(ok.group(1)) if ok else 0}


def h2load_baseline(target: str, args: argparse.Namespace, outs: list[Outcome]) -> dict[str, Any]:
    """Ping, and the first settle of this run sent again and again (its replay path)."""
    if shutil.which("h2load") is None:
        raise SystemExit("--h2load needs h2load (Debian's nghttp2-client): make bench-tools")
    duration = max(args.ping_duration, 5.0)
    conc = max(1, args.concurrency // 4)
    ping = h2load(target, "Ping", b"", duration, 4, conc)
    replay = {"per_s": 0.0, "http_2xx": 0}
    if outs and outs[0].first_settle:
        replay = h2load(target, "Settle", outs[0].first_settle, duration, 4, conc)
    return {"ping": ping, "settle_replay": replay}


def _sample_rss(proc: Any, out: list[float], stop: threading.Event) -> None:
    """RSS in MB of a server process and its workers, once a second until `stop`."""
    import psutil

    root = psutil.Process(proc.pid)
    while not stop.wait(1.0):
        total = 0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        out.append(round(total / 1e6, 1))


def rss_trend(rss: list[float]) -> dict[str, float] | None:
    """The server's RSS at the start, middle and end, and its least-squares slope over the
    second half of the run in MB per minute (a flat soak has a slope near zero there once
    its caches have filled)."""
    if len(rss) < 20:
        return None
    half = rss[len(rss) // 2 :]
    slope = float(np.polyfit(np.arange(len(half)) / 60.0, np.asarray(half), 1)[0])
    return {
        "first_mb": rss[0],
        "middle_mb": rss[len(rss) // 2],
        "last_mb": rss[-1],
        "max_mb": max(rss),
        "second_half_mb_per_min": round(slope, 3),
    }


def merge_hists(outs: list[Outcome]) -> dict[str, HdrHistogram]:
    merged: dict[str, HdrHistogram] = {}
    for o in outs:
        for k, enc in o.hist.items():
            merged.setdefault(k, _hist()).add(HdrHistogram.decode(enc))
    return merged


def summary(h: HdrHistogram) -> dict[str, float]:
    return {
        "count": h.get_total_count(),
        **{f"p{p:g}_ms": h.get_value_at_percentile(p) / 1000 for p in (50, 90, 99, 99.9)},
        "max_ms": h.get_max_value() / 1000,
    }


def load_population(
    target: str, institution: str, persons: list[catalog_pb2.PersonRecord], sec: Security
) -> None:
    with sec.channel(target) as ch:
        st = settlement_pb2_grpc.SettlementStub(ch)
        cat = catalog_pb2_grpc.CatalogStub(ch)
        hdr = common_pb2.RequestHeader(
            msgid=f"LP{secrets.token_hex(6)}", fixmedins_code=institution, opter=OPERATOR
        )
        sign_no = st.SignIn(sec.sign_in(hdr), timeout=30).sign_no
        for i in range(0, len(persons), 2000):
            hdr = common_pb2.RequestHeader(
                msgid=f"LP{secrets.token_hex(6)}",
                fixmedins_code=institution,
                opter=OPERATOR,
                sign_no=sign_no,
            )
            cat.PutPersons(
                catalog_pb2.PutPersonsRequest(header=hdr, persons=persons[i : i + 2000]),
                timeout=120,
            )


def load_reference(
    target: str,
    institution: str,
    catalog_size: int,
    his_items: int,
    policy: str | None,
    sec: Security,
) -> tuple[tuple[demo_data.HisItem, ...] | None, dict[str, Any]]:
    """A generated catalog of `catalog_size` items imported as a new version, the
    institution's item master of `his_items` drawn from it with its mappings, and the policy
    file (TOML or JSON) put in force; returns the item master the visits draw their fee
    lines from (None when the demo catalog stays), and what was loaded, for the report."""
    master = None
    loaded: dict[str, Any] = {}
    with sec.channel(target) as ch:
        st = settlement_pb2_grpc.SettlementStub(ch)
        cat_stub = catalog_pb2_grpc.CatalogStub(ch)

        def hdr(sign_no: str = "") -> common_pb2.RequestHeader:
            return common_pb2.RequestHeader(
                msgid=f"LR{secrets.token_hex(6)}",
                fixmedins_code=institution,
                opter=OPERATOR,
                sign_no=sign_no,
            )

        sign_no = st.SignIn(sec.sign_in(hdr()), timeout=30).sign_no
        if catalog_size:
            t0 = time.perf_counter()
            cat = make_catalog(catalog_size, seed=CATALOG_SEED)
            items = demo_data.catalog_items(cat)
            master = demo_data.hospital_master(
                cat,
                institution,
                min(his_items, catalog_size // 2),
                demo_data.MAPPED_SHARE,
                tag=f"C{catalog_size}-",
            )
            built = time.perf_counter() - t0
            version = int(time.time())  # newer than any earlier run's
            chunks = (
                catalog_pb2.CatalogChunk(
                    header=hdr(sign_no) if i == 0 else None,
                    version=version,
                    items=items[i : i + 5000],
                )
                for i in range(0, len(items), 5000)
            )
            got = cat_stub.ImportCatalog(chunks, timeout=600)
            maps = demo_data.mappings(institution, master)
            for i in range(0, len(maps), 5000):
                cat_stub.PutMappings(
                    catalog_pb2.PutMappingsRequest(
                        header=hdr(sign_no), mappings=maps[i : i + 5000]
                    ),
                    timeout=120,
                )
            print(
                f"catalog version {got.version}: {got.item_count:,} items ({built:.1f} s to"
                f" generate, {time.perf_counter() - t0 - built:.1f} s to load);"
                f" item master {len(master):,}, {len(maps):,} mapped"
            )
            loaded.update(
                catalog_version=got.version,
                catalog_items=got.item_count,
                his_items=len(master),
                mapped=len(maps),
            )
        if policy:
            text = Path(policy).read_text("utf-8")
            fmt = "json" if policy.endswith(".json") else "toml"
            pv = cat_stub.PutPolicy(
                catalog_pb2.PutPolicyRequest(header=hdr(sign_no), format=fmt, text=text),
                timeout=60,
            )
            print(f"policy {pv.policy_id} version {pv.version} ({pv.name}) in force")
            loaded.update(policy_id=pv.policy_id, policy_version=pv.version)
    return master, loaded


def check_books(
    target: str, institution: str, run_id: str, outs: list[Outcome], sec: Security
) -> dict[str, Any]:
    """The server's settlements of this run (by msgid prefix) against what it acknowledged."""
    acked: dict[str, tuple[int, int, int]] = {}
    for o in outs:
        acked.update(o.settled)
    cancelled = {s for o in outs for s in o.cancelled}
    day = today()
    mine: list[Any] = []
    with sec.channel(target) as ch:
        st = settlement_pb2_grpc.SettlementStub(ch)
        hdr = common_pb2.RequestHeader(
            msgid=f"LB{secrets.token_hex(6)}", fixmedins_code=institution, opter=OPERATOR
        )
        sign_no = st.SignIn(sec.sign_in(hdr), timeout=30).sign_no
        rec = reconciliation_pb2_grpc.ReconciliationStub(ch)
        token = ""
        while True:  # a busy day is many messages' worth: page through it
            page = rec.Details(
                reconciliation_pb2.DetailsRequest(
                    header=common_pb2.RequestHeader(
                        fixmedins_code=institution, opter=OPERATOR, sign_no=sign_no
                    ),
                    begin_date=day,
                    end_date=day,
                    page_size=10_000,
                    page_token=token,
                ),
                timeout=120,
            )
            mine += [r.ours for r in page.results if r.ours.msgid.startswith(f"{run_id}-")]
            token = page.next_page_token
            if not token:
                break
    held = {d.setl_id: d for d in mine}
    problems: list[str] = []
    if len(held) != len(mine):
        problems.append(f"{len(mine) - len(held)} settlement ids appear twice")
    for setl_id, (medfee, fund, cash) in acked.items():
        d = held.get(setl_id)
        if d is None:
            problems.append(f"{setl_id}: acknowledged, not at the server")
            continue
        want = common_pb2.CANCELLED if setl_id in cancelled else common_pb2.SETTLED
        if d.state != want or (d.medfee_sumamt, d.fund_pay_sumamt, d.psn_cash_pay) != (
            medfee,
            fund,
            cash,
        ):
            problems.append(f"{setl_id}: state or amounts differ from the answer")
    extra = set(held) - set(acked)
    if extra:
        problems.append(f"{len(extra)} settlements at the server were never acknowledged")
    return {
        "acknowledged": len(acked),
        "cancelled": len(cancelled),
        "at_server": len(held),
        "balanced": not problems,
        "problems": problems[:20],
    }


def server_latency(metrics_url: str, method: str = "Settle") -> dict[str, Any]:
    """The server's own view of `method`'s latency, from its `grpc_server_handling_seconds`
    histogram (every call since it started, all codes, replays included): the share answered
    within each bucket bound, and p50/p99 interpolated within buckets the way PromQL's
    histogram_quantile does. Against the generator's figures it tells how much of a tail is
    the server's."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    cum: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "grpc_server_handling_seconds":
            continue
        for s in fam.samples:
            if s.name.endswith("_bucket") and s.labels.get("grpc_method") == method:
                le = float(s.labels["le"])
                cum[le] = cum.get(le, 0.0) + s.value
    bounds = sorted(cum)
    total = cum[math.inf] if bounds else 0
    if not total:
        return {"count": 0}

    def quantile(q: float) -> float:
        rank, lo, below = q * total, 0.0, 0.0
        for b in bounds:
            if cum[b] >= rank:
                if math.isinf(b):
                    return lo * 1000
                return (lo + (b - lo) * (rank - below) / max(cum[b] - below, 1e-9)) * 1000
            lo, below = b, cum[b]
        return lo * 1000

    return {
        "count": int(total),
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
        "within_ms": {f"{b * 1000:g}": cum[b] / total for b in bounds if not math.isinf(b)},
    }


def per_second(outs: list[Outcome]) -> list[dict[str, float]]:
    """Settles and their latency per whole second of the run (the last, partial second of
    the drain left out)."""
    whole = int(min(o.elapsed for o in outs))
    buckets: dict[int, list[float]] = {}
    for o in outs:
        for t, lat in o.timeline:
            if t < whole:
                buckets.setdefault(int(t), []).append(lat)
    return [
        {
            "second": s,
            "settles": len(v),
            "p50_ms": float(np.percentile(v, 50) * 1000),
            "p99_ms": float(np.percentile(v, 99) * 1000),
        }
        for s, v in sorted(buckets.items())
    ]


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = report["timeline"]
    rss = report.get("server_rss_mb") or []
    fig, axes = plt.subplots(3 if rss else 2, 1, figsize=(9, 8 if rss else 6), sharex=True)
    a, b = axes[0], axes[1]
    if rss:
        axes[2].plot(range(1, len(rss) + 1), rss, color="tab:green")
        axes[2].set_ylabel("server RSS (MB)")
    a.plot([r["second"] for r in tl], [r["settles"] for r in tl], label="Settle/s")
    if report.get("ping"):
        a.axhline(report["ping"]["per_s"], color="grey", linestyle="--", label="Ping/s")
    a.set_ylabel("calls per second")
    a.legend()
    b.plot([r["second"] for r in tl], [r["p50_ms"] for r in tl], label="p50")
    b.plot([r["second"] for r in tl], [r["p99_ms"] for r in tl], label="p99")
    b.set_ylabel("Settle latency (ms)")
    axes[-1].set_xlabel("seconds into the run")
    b.legend()
    fig.suptitle(report["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="host:port of a running front-end")
    where.add_argument("--spawn", action="store_true", help="start a demo front-end here")
    ap.add_argument("--workers", type=int, default=1, help="with --spawn: server processes")
    ap.add_argument("--institution", default="H44010100001")
    ap.add_argument("--persons", type=int, default=0, help="generated persons to load first")
    ap.add_argument(
        "--catalog",
        type=int,
        default=0,
        help="import a generated catalog of this many items first (0: the server's own)",
    )
    ap.add_argument(
        "--his-items",
        type=int,
        default=demo_data.HOSPITAL_ITEMS,
        help="with --catalog: the institution's item master drawn from it (92 %% mapped)",
    )
    ap.add_argument("--policy", help="a policy file (TOML, or JSON by its name) to put in force")
    ap.add_argument(
        "--prepared",
        type=int,
        default=0,
        help="register and upload this many outpatient visits first, then time only their"
        " Settle (the front-end benchmark's measure); the run ends early when they run out",
    )
    ap.add_argument("--clients", type=int, default=1, help="load generator processes")
    ap.add_argument("--concurrency", type=int, default=32, help="closed loop: visits in flight")
    ap.add_argument("--rate", type=float, default=0.0, help="open loop: visits per second")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    ap.add_argument("--ping-duration", type=float, default=5.0, help="seconds of Ping (0: none)")
    ap.add_argument("--inpatient-share", type=float, default=Shape.inpatient_share)
    ap.add_argument("--cancel-rate", type=float, default=Shape.cancel_rate)
    ap.add_argument("--retry-rate", type=float, default=Shape.retry_rate)
    ap.add_argument("--max-stay-lines", type=int, default=5000)
    ap.add_argument(
        "--h2load",
        action="store_true",
        help="also drive Ping, and a Settle replayed with one prebuilt request, with h2load",
    )
    ap.add_argument("--tls", action="store_true", help="with --spawn: mutual TLS (fresh CA)")
    ap.add_argument(
        "--signing",
        nargs="?",
        const="sm2",
        choices=["sm2", "hmac"],
        help="with --spawn: every call signed (SM3withSM2, or HMAC-SM3)",
    )
    ap.add_argument("--tls-dir", help="with --target: a `certs init` directory (mutual TLS)")
    ap.add_argument("--sign-key", help="with --target: the institution's SM2 secret (hex file)")
    ap.add_argument(
        "--password-file",
        help=f"with --target: the password of the run's operator {OPERATOR!r} (first line)",
    )
    ap.add_argument(
        "--security-password-file",
        help=f"with --target: {operators.SECURITY_OFFICER}'s password: the kit registers"
        f" {OPERATOR!r} itself (with --password-file's password, or a fresh one)",
    )
    ap.add_argument(
        "--metrics",
        help="the server's /metrics URL, for its own view of Settle latency (set by --spawn)",
    )
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--plot", help="write a PNG of throughput and latency over time here")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    args = ap.parse_args(argv)
    shape = Shape(
        inpatient_share=args.inpatient_share,
        in_lines=(min(200, args.max_stay_lines), args.max_stay_lines),
        cancel_rate=args.cancel_rate,
        retry_rate=args.retry_rate,
    )
    with contextlib.ExitStack() as stack:
        sec = Security()
        if args.tls_dir:
            d, inst = Path(args.tls_dir), args.institution
            sec = Security(tls=(str(d / f"{inst}.pem"), str(d / f"{inst}.key"), str(d / "ca.pem")))
        if args.sign_key:
            sec = Security(sec.tls, bytes.fromhex(Path(args.sign_key).read_text().strip()))
        if args.spawn:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medsettle-load-")))
            mport = free_port()
            flags = ["--metrics-port", str(mport)]
            if args.tls:  # mutual TLS with a fresh private CA
                certs.init(tmp / "pki", [args.institution], [])
                files = [
                    str(tmp / "pki" / f)
                    for f in (f"{args.institution}.pem", f"{args.institution}.key", "ca.pem")
                ]
                sec = Security(tls=(files[0], files[1], files[2]))
                flags += ["--tls-cert", files[0], "--tls-key", files[1], "--tls-ca", files[2]]
                flags += ["--require-client-cert"]
            if args.signing == "sm2":  # the institution's SM2 key registered
                secret = new_sm2_secret()
                key = InstitutionKey(sm2_public_key=engine_rs.sm2_public_key(secret))
                sec = Security(sec.tls, secret, SM2)
            elif args.signing == "hmac":  # a shared HMAC-SM3 secret
                secret = secrets.token_bytes(32)
                key = InstitutionKey(hmac_key=secret)
                sec = Security(sec.tls, secret, HMAC)
            if args.signing:  # every call signed
                write_keys(tmp / "keys.toml", {args.institution: key})
                flags += ["--signing", "required", "--signing-keys", str(tmp / "keys.toml")]
            server = LocalServer(
                tmp / "load.db",
                port=free_port(),
                workers=args.workers,
                log=tmp / "server.log",
                extra=flags,
                credentials=sec._credentials(),
            ).start()
            stack.callback(server.stop)
            target = server.target
            args.metrics = args.metrics or f"http://127.0.0.1:{mport}/metrics"
            officer = server.demo_password()
        else:
            target = args.target
            officer = first_line(args.security_password_file)
        sec = replace(sec, password=first_line(args.password_file) or operators.new_password())
        with sec.channel(target) as ch:  # the run's operator `load`, with every role
            if not (
                officer and operators.ensure(ch, args.institution, OPERATOR, sec.password, officer)
            ):
                print(
                    f"{operators.SECURITY_OFFICER} did not sign in: {OPERATOR} must be known"
                    " with the password of --password-file"
                )
        people = [(p.psn_no, p.insutype) for p in demo_data.persons()]
        if args.persons:
            extra = demo_data.crowd(POPULATION_FIRST, args.persons, seed=7)
            t0 = time.perf_counter()
            load_population(target, args.institution, extra, sec)
            print(f"loaded {len(extra):,} persons in {time.perf_counter() - t0:.1f} s")
            people += [(p.psn_no, p.insutype) for p in extra]
        master: tuple[demo_data.HisItem, ...] | None = None
        reference: dict[str, Any] = {}
        if args.catalog or args.policy:
            master, reference = load_reference(
                target, args.institution, args.catalog, args.his_items, args.policy, sec
            )
        run_id = f"L{secrets.token_hex(4)}"

        def jobs(kind: str, duration: float) -> list[Job]:
            return [
                Job(
                    target=target,
                    institution=args.institution,
                    run_id=run_id,
                    proc=i,
                    persons=people[i :: args.clients],
                    shape=shape,
                    duration=duration,
                    concurrency=max(1, args.concurrency // args.clients),
                    rate=args.rate / args.clients,
                    kind=kind,
                    begndate=demo_data.YEAR * 10000 + 615,
                    prepared=args.prepared // args.clients if kind == "visits" else 0,
                    items=master,
                    security=sec,
                )
                for i in range(args.clients)
            ]

        ping = None
        if args.ping_duration > 0:
            pouts = run_phase(jobs("ping", args.ping_duration), "Ping", args.quiet)
            n = sum(o.pings for o in pouts)
            ping = {
                "per_s": n / max(o.elapsed for o in pouts),
                **summary(merge_hists(pouts)["Ping"]),
            }
        rss: list[float] = []
        watch = threading.Event()
        if args.spawn:  # the server's memory once a second (a soak must stay flat)
            threading.Thread(
                target=_sample_rss, args=(server.proc, rss, watch), daemon=True
            ).start()
        try:
            outs = run_phase(jobs("visits", args.duration), "Visits", args.quiet)
        finally:
            watch.set()
        try:
            books = check_books(target, args.institution, run_id, outs, sec)
        except grpc.RpcError as err:  # the figures are still worth the report
            books = {
                "acknowledged": sum(len(o.settled) for o in outs),
                "cancelled": 0,
                "at_server": -1,
                "balanced": False,
                "problems": [f"the books could not be read: {err.code().name}"],
            }
        seen_by_server = server_latency(args.metrics) if args.metrics else None
        native = None
        if args.h2load:
            native = h2load_baseline(target, args, outs)
    elapsed = max(o.elapsed for o in outs)
    hists = merge_hists(outs)
    settles = sum(o.settles for o in outs)
    errors: Counter[str] = Counter()
    for o in outs:
        errors.update(o.errors)
    report: dict[str, Any] = {
        "title": (
            (f"open loop {args.rate:g}/s" if args.rate else f"closed loop x{args.concurrency}")
            + f", {args.clients} client process(es), {args.duration:.0f} s"
        ),
        "args": vars(args),
        "shape": asdict(shape),
        "settles": settles,
        "settles_per_s": settles / elapsed,
        "fund_pay_sumamt": sum(f for o in outs for _, f, _ in o.settled.values()),
        "reference": reference,
        "visits": sum(o.visits for o in outs),
        "retries_identical": sum(o.retries_identical for o in outs),
        "retries_different": sum(o.retries_different for o in outs),
        "cancels": sum(o.cancels for o in outs),
        "cancels_refused": sum(o.cancels_refused for o in outs),
        "errors": dict(errors),
        "error_details": {k: v for o in outs for k, v in o.error_details.items()},
        "latency": {k: summary(h) for k, h in sorted(hists.items())},
        "server_settle_latency": seen_by_server,
        "ping": ping,
        "settle_to_ping": (settles / elapsed) / ping["per_s"] if ping else None,
        "books": books,
        "h2load": native,
        "timeline": per_second(outs),
        "server_rss_mb": rss,
        "server_rss_trend": rss_trend(rss),
    }
    s = report["latency"].get("Settle", {})
    print(
        f"Settle {report['settles_per_s']:,.0f}/s over {elapsed:.0f} s:"
        f" p50 {s.get('p50_ms', 0):.1f} ms, p99 {s.get('p99_ms', 0):.1f} ms,"
        f" p99.9 {s.get('p99.9_ms', 0):.1f} ms;"
        f" {report['visits']:,} visits, {report['cancels']} cancels,"
        f" {report['retries_identical']} retries answered identically"
        f" ({report['retries_different']} not), errors {dict(errors) or 'none'}"
    )
    if ping:
        print(
            f"Ping {ping['per_s']:,.0f}/s (p99 {ping['p99_ms']:.1f} ms): Settle/Ping ="
            f" {report['settle_to_ping']:.2f}"
        )
    if seen_by_server and seen_by_server["count"]:
        print(
            f"the server's own histogram, {seen_by_server['count']:,} Settle calls:"
            f" p50 ~{seen_by_server['p50_ms']:.1f} ms, p99 ~{seen_by_server['p99_ms']:.1f} ms,"
            f" {seen_by_server['within_ms']['20']:.1%} within 20 ms"
        )
    if native:
        print(
            f"h2load: Ping {native['ping']['per_s']:,.0f}/s, Settle replayed (one prebuilt"
            " request, answered from the idempotency record)"
            f" {native['settle_replay']['per_s']:,.0f}/s"
        )
    print(
        f"books: {books['acknowledged']:,} acknowledged ({books['cancelled']} cancelled),"
        f" {books['at_server']:,} at the server:"
        f" {'balanced' if books['balanced'] else 'NOT BALANCED'}"
    )
    for p in books["problems"]:
        print(f"  {p}")
    if report["server_rss_trend"]:
        t = report["server_rss_trend"]
        print(
            f"server RSS {t['first_mb']:.0f} -> {t['middle_mb']:.0f} -> {t['last_mb']:.0f} MB"
            f" (max {t['max_mb']:.0f}); second half {t['second_half_mb_per_min']:+.2f} MB/min"
        )
    for k, v in report["error_details"].items():
        print(f"  first {k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report, args.plot)
    ok = books["balanced"] and not report["retries_different"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
