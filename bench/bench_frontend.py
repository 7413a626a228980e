"""Front-end benchmark (issue 3): durable Settle throughput for a 10-line outpatient visit as
a ratio to `Ping` throughput, both driven by the same load generator against the same
server in the same run, with p50/p99 latency; and a 5,000-line inpatient stay streamed,
pre-settled and settled.

    .venv/bin/python -m bench.bench_frontend --workers 2 --clients 2 --concurrency 64

The load generator is closed-loop (a fixed number of calls in flight) over grpc.aio in
`--clients` processes. Visits are registered and their fee lines uploaded before the timed
part (through gRPC too); each timed Settle settles one prepared visit, durably (WAL,
synchronous=FULL, group commit). The server runs as a child process on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import operators
from bench.cpu import cores_used, cpu_snapshot
from clients.sdk import MedsettleClient
from medsettle.v1 import common_pb2, settlement_pb2, settlement_pb2_grpc
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer
from server.demo.visit import fee_lines

INST = "H44010100001"
DAY = 20260615


def _header(sign_no: str, msgid: str) -> common_pb2.RequestHeader:
    return common_pb2.RequestHeader(
        msgid=msgid, fixmedins_code=INST, opter="bench", sign_no=sign_no
    )


async def _retried(call: Any, request: Any) -> Any:
    """`call(request)`, again on UNAVAILABLE: a stream the server refused while the
    connection's stream limit was being agreed (RST_STREAM, REFUSED_STREAM) was never
    processed, and the request's msgid makes a retry of one that was harmless."""
    for attempt in range(5):
        try:
            return await call(request, timeout=30)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                raise
            await asyncio.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


async def _prepare_async(
    target: str, sign_no: str, n: int, lines: int, conc: int
) -> list[tuple[str, str, int]]:
    """Register n outpatient visits over the crowd of demo persons, upload `lines` each."""
    persons = [p for p in demo_data.persons() if p.insutype in (310, 390)]
    items = demo_data.his_items(INST)
    rng = np.random.default_rng(1)
    out: list[tuple[str, str, int]] = []
    sem = asyncio.Semaphore(conc)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = settlement_pb2_grpc.SettlementStub(ch)

        async def one(i: int) -> None:
            p = persons[i % len(persons)]
            picks = rng.integers(len(items), size=lines)
            ls = []
            for j, k in enumerate(picks):
                it = items[int(k)]
                ls.append(
                    settlement_pb2.FeeLine(
                        feedetl_sn=f"{j:04d}",
                        medins_list_codg=it.code,
                        cnt=10_000,
                        pric=it.price,
                        det_item_fee_sumamt=it.price,
                    )
                )
            async with sem:
                reg = await _retried(
                    stub.Register,
                    settlement_pb2.RegisterRequest(
                        header=_header(sign_no, f"PREP-R-{i}"),
                        psn_no=p.psn_no,
                        insutype=p.insutype,
                        med_type=11,
                        begndate=DAY,
                        ipt_otp_no=f"MZ{i}",
                    ),
                )
                await _retried(
                    stub.UploadFees,
                    settlement_pb2.UploadFeesRequest(
                        header=_header(sign_no, f"PREP-U-{i}"), mdtrt_id=reg.mdtrt_id, lines=ls
                    ),
                )
            out.append((reg.mdtrt_id, p.psn_no, sum(x.det_item_fee_sumamt for x in ls)))

        await asyncio.gather(*(one(i) for i in range(n)))
    return out


def _client_proc(
    args: tuple[str, str, str, list[tuple[str, str, int]], int, float, int, int],
) -> dict[str, Any]:
    kind, target, sign_no, visits, conc, duration, proc, channels = args
    return asyncio.run(_drive(kind, target, sign_no, visits, conc, duration, proc, channels))


async def _drive(
    kind: str,
    target: str,
    sign_no: str,
    visits: list[tuple[str, str, int]],
    conc: int,
    duration: float,
    proc: int,
    channels: int,
) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    # Requests are serialized before the clock starts and answers are left as bytes, so the
    # generator's own cost per call is the same for Ping and Settle: what differs is the
    # server's work.
    if kind == "ping":
        ping = settlement_pb2.PingRequest().SerializeToString()
        todo: Iterator[bytes] = itertools.repeat(ping)
        path = "/medsettle.v1.Settlement/Ping"
    else:
        todo = iter(
            [
                settlement_pb2.SettleRequest(
                    header=_header(sign_no, f"B-{proc}-{i}"),
                    mdtrt_id=mdtrt_id,
                    psn_no=psn_no,
                    medfee_sumamt=amt,
                    acct_used_flag=True,
                ).SerializeToString()
                for i, (mdtrt_id, psn_no, amt) in enumerate(visits)
            ]
        )
        path = "/medsettle.v1.Settlement/Settle"
    async with contextlib.AsyncExitStack() as stack:
        # Several TCP connections (a local subchannel pool each): SO_REUSEPORT spreads
        # connections, not calls, over the server's worker processes.
        calls: list[Any] = []
        for _ in range(channels):
            ch = await stack.enter_async_context(
                grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            )
            warm: Any = ch.unary_unary("/medsettle.v1.Settlement/Ping")
            await warm(b"", timeout=10)
            calls.append(ch.unary_unary(path))  # bytes in, bytes out
        start = time.perf_counter()
        stop_at = start + duration

        async def loop(call: Any) -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                request = next(todo, None)
                if request is None:
                    return
                t0 = time.perf_counter()
                try:
                    await call(request, timeout=10)
                except grpc.RpcError:
                    errors += 1
                lat.append(time.perf_counter() - t0)

        await asyncio.gather(*(loop(calls[w % channels]) for w in range(conc)))
        elapsed = time.perf_counter() - start
    return {"calls": len(lat), "errors": errors, "elapsed": elapsed, "lat": lat}


def run_load(
    kind: str,
    target: str,
    sign_no: str,
    visits: list[tuple[str, str, int]],
    clients: int,
    conc: int,
    duration: float,
    channels: int = 4,
) -> dict[str, Any]:
    """`clients` processes, `channels` connections each, `conc` calls in flight in all."""
    parts = [visits[i::clients] for i in range(clients)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(clients) as pool:
        res = pool.map(
            _client_proc,
            [
                (kind, target, sign_no, parts[i], conc // clients, duration, i, channels)
                for i in range(clients)
            ],
        )
    lat = np.array([x for r in res for x in r["lat"]])
    calls = sum(r["calls"] for r in res)
    elapsed = max(r["elapsed"] for r in res)
    return {
        "kind": kind,
        "calls": calls,
        "errors": sum(r["errors"] for r in res),
        "per_s": calls / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
    }


def _figures(r: dict[str, Any]) -> str:
    return f"{r['per_s']:8.0f}/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"


def _cpu(r: dict[str, Any]) -> str:
    """Cores kept busy and CPU microseconds per call: the server's, the rest of the
    machine's (the load generator, mostly)."""
    c = r["cores"]
    r["server_us_per_call"] = round(c["server"] * 1e6 / r["per_s"])
    r["rest_us_per_call"] = round(c["rest"] * 1e6 / r["per_s"])
    return (
        f"cores: server {c['server']:.2f}, rest {c['rest']:.2f};"
        f" CPU per call: server {r['server_us_per_call']} us, rest {r['rest_us_per_call']} us"
    )


def inpatient_stay(target: str, n_lines: int, password: str) -> dict[str, float]:
    c = MedsettleClient(
        target, fixmedins_code=INST, opter="bench", deadline_s=60, password=password
    )
    c.sign_in()
    p = demo_data.persons()[0]
    v = c.register(
        p.psn_no, insutype=310, med_type=21, begndate=DAY, ipt_otp_no="ZYB", dise_codg=["I21.9"]
    )
    ls = fee_lines(INST, n_lines, seed=9, begndate=DAY)
    amt = sum(x.det_item_fee_sumamt for x in ls)
    t0 = time.perf_counter()
    c.stream_fees(v.mdtrt_id, ls, chunk=1000)
    t1 = time.perf_counter()
    c.pre_settle(v.mdtrt_id, p.psn_no, medfee_sumamt=amt)
    t2 = time.perf_counter()
    c.settle(v.mdtrt_id, p.psn_no, medfee_sumamt=amt)
    t3 = time.perf_counter()
    c.close()
    return {
        "stream_ms": (t1 - t0) * 1000,
        "presettle_ms": (t2 - t1) * 1000,
        "settle_ms": (t3 - t2) * 1000,
        "total_ms": (t3 - t0) * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=2, help="server processes (SO_REUSEPORT)")
    ap.add_argument("--clients", type=int, default=2, help="load generator processes")
    ap.add_argument("--concurrency", type=int, default=64, help="calls in flight, all clients")
    ap.add_argument("--channels", type=int, default=4, help="connections per client process")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--visits", type=int, default=40_000, help="prepared outpatient visits")
    ap.add_argument("--stay-lines", type=int, default=5000)
    ap.add_argument("--stays", type=int, default=5, help="inpatient stays timed (best and median)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsettle-bench-") as tmp:
        server = LocalServer(
            Path(tmp) / "bench.db", workers=args.workers, log=Path(tmp) / "server.log"
        )
        server.start()
        try:
            password = operators.register(server, INST, "bench")
            admin = MedsettleClient(
                server.target, fixmedins_code=INST, opter="bench", password=password
            )
            sign_no = admin.sign_in().sign_no
            t0 = time.perf_counter()
            visits = asyncio.run(_prepare_async(server.target, sign_no, args.visits, 10, 64))
            print(f"prepared {len(visits)} visits in {time.perf_counter() - t0:.1f} s", flush=True)
            servers = {"server": server}
            before = cpu_snapshot(servers)
            t0 = time.perf_counter()
            ping = run_load(
                "ping",
                server.target,
                sign_no,
                [],
                args.clients,
                args.concurrency,
                args.duration,
                args.channels,
            )
            ping["cores"] = cores_used(before, cpu_snapshot(servers), time.perf_counter() - t0)
            print(f"Ping:   {_figures(ping)}  {_cpu(ping)}", flush=True)
            before = cpu_snapshot(servers)
            t0 = time.perf_counter()
            settle = run_load(
                "settle",
                server.target,
                sign_no,
                visits,
                args.clients,
                args.concurrency,
                args.duration,
                args.channels,
            )
            settle["cores"] = cores_used(before, cpu_snapshot(servers), time.perf_counter() - t0)
            if settle["calls"] >= len(visits):  # the load ended early: the rate is understated
                print("warning: every prepared visit was settled; raise --visits", flush=True)
            print(
                f"Settle: {_figures(settle)}  errors {settle['errors']}  calls {settle['calls']}"
                f"  {_cpu(settle)}",
                flush=True,
            )
            ratio = settle["per_s"] / ping["per_s"]
            print(f"Settle / Ping = {ratio:.2f}", flush=True)
            conn = sqlite3.connect(server.db)
            stored = conn.execute("SELECT COUNT(*) FROM settlements WHERE state = 1").fetchone()[0]
            conn.close()
            stays = [
                inpatient_stay(server.target, args.stay_lines, password) for _ in range(args.stays)
            ]
            totals = sorted(s["total_ms"] for s in stays)
            med = stays[[s["total_ms"] for s in stays].index(totals[len(totals) // 2])]
            print(
                f"{args.stay_lines}-line stay: stream {med['stream_ms']:.0f} ms, pre-settle"
                f" {med['presettle_ms']:.0f} ms, settle {med['settle_ms']:.0f} ms, total"
                f" {med['total_ms']:.0f} ms (median of {len(stays)}; best {totals[0]:.0f} ms)",
                flush=True,
            )
        finally:
            server.stop()
    out = {
        "args": vars(args),
        "ping": ping,
        "settle": settle,
        "settle_to_ping": ratio,
        "settlements_stored": stored,
        "stay_median": med,
        "stay_best_ms": totals[0],
    }
    if settle["calls"] - settle["errors"] != stored:
        print(f"books: {settle['calls'] - settle['errors']} acknowledged vs {stored} stored")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
