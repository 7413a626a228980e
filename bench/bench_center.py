"""Center benchmark (issue 4): center-mode Settle throughput with front-end, center and
PostgreSQL on one machine, as a ratio to local mode in the same run, with one and with two
center worker processes; and the forwarder's drain rate after a backlog of settlements.

    .venv/bin/python -m bench.bench_center            # about 6 minutes on 2 cores
    .venv/bin/python -m bench.bench_center --quick    # smoke run, about a minute

Three parts, each on fresh databases, with the closed-loop grpc.aio load generator of
`bench.bench_frontend` (visits registered and uploaded through gRPC before the timed part):

1. local mode: a front-end alone (no center); Settle for `--duration` seconds;
2. center mode: a center (`--role center`, PostgreSQL, `--workers W`, W = 1 then 2, each on
   a new database) and a front-end in `--mode center` pointing at it; the same load. At the
   end the books are checked: settlements acknowledged = rows in the center's `settlements`
   = rows in the front-end's SQLite `settlements`;
3. forwarder drain: a front-end in local mode whose `--center-target` is a port where nothing
   listens yet settles `--backlog` visits (the outbox fills); then a center starts on that
   port and the SQLite outbox is polled until no row is unsent. The rate is the rows drained
   over the time from the first acknowledged batch to the last; the center must then hold
   exactly the backlog.

Each measurement also reports the cores kept busy by the front-end, the center, PostgreSQL
and the rest of the machine (the load generator, mostly), from psutil's CPU times.
`--quick` is a smoke run of about a minute. Everything runs on loopback, stops itself, and
drops its databases (`medsettle_bench_<hex>` on `--pg`) and temporary files at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench import operators
from bench.bench_frontend import INST, _figures, _prepare_async, run_load
from bench.cpu import cores_used, cpu_snapshot
from clients.sdk import MedsettleClient
from server.demo.localserver import LocalServer, free_port

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new empty PostgreSQL database for the block (dropped WITH (FORCE) after); its DSN."""
    name = f"medsettle_bench_{secrets.token_hex(6)}"
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def running(server: LocalServer) -> Iterator[LocalServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sqlite_count(db: str, query: str) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute(query).fetchone()[0])
    finally:
        conn.close()


def pg_count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def sign_in(front: LocalServer) -> str:
    password = operators.register(front, INST, "bench")
    admin = MedsettleClient(front.target, fixmedins_code=INST, opter="bench", password=password)
    try:
        return admin.sign_in().sign_no
    finally:
        admin.close()


def prepare(front: LocalServer, n: int) -> tuple[str, list[tuple[str, str, int]]]:
    sign_no = sign_in(front)
    target = front.target
    t0 = time.perf_counter()
    visits = asyncio.run(_prepare_async(target, sign_no, n, 10, 64))
    dt = time.perf_counter() - t0
    print(f"  prepared {len(visits)} visits in {dt:.1f} s ({len(visits) / dt:.0f}/s)", flush=True)
    return sign_no, visits


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A server's metric samples: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def chain(
    ports: tuple[int, int],
    before: tuple[dict[Any, float], dict[Any, float]],
    r: dict[str, Any],
    concurrency: int,
) -> dict[str, float]:
    """Where a center-mode settle's time goes, from both servers' metrics over the load:
    settles a center call (`SettleSummaries`) carries and such calls a second, the center's
    handler time a call, the front-end's handler time a settle, and the time a settle takes
    as the load generator sees it (calls in flight / rate): the rest is outside the
    handlers (grpc, the generator)."""
    after = scrape(ports[0]), scrape(ports[1])

    def grew(side: int, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(
            v - before[side].get(k, 0.0)
            for k, v in after[side].items()
            if k[0] == name and want <= k[1]
        )

    calls = grew(0, "medsettle_center_link_batch_settles_count")
    handling = "grpc_server_handling_seconds"
    summaries = grew(1, f"{handling}_count", grpc_method="SettleSummaries")
    settles = grew(0, f"{handling}_count", grpc_method="Settle")
    return {
        "settles_per_center_call": grew(0, "medsettle_center_link_batch_settles_sum") / calls,
        "center_calls_per_s": calls * r["per_s"] / r["calls"],
        "center_ms_per_call": 1000
        * grew(1, f"{handling}_sum", grpc_method="SettleSummaries")
        / summaries,
        "front_handler_ms_per_settle": 1000
        * grew(0, f"{handling}_sum", grpc_method="Settle")
        / settles,
        "client_ms_per_settle": 1000 * concurrency / r["per_s"],
    }


def settle_load(
    front: LocalServer,
    args: argparse.Namespace,
    center: LocalServer | None = None,
    ports: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The Settle load on `front`; with the metrics `ports` of the front-end and the center,
    where a settle's time goes as well (`chain`)."""
    sign_no, visits = prepare(front, args.visits)
    servers = {"front_end": front, **({"center": center} if center is not None else {})}
    scraped = (ports, (scrape(ports[0]), scrape(ports[1]))) if ports is not None else None
    before = cpu_snapshot(servers)
    t0 = time.perf_counter()
    r = run_load(
        "settle", front.target, sign_no, visits, args.clients, args.concurrency, args.duration
    )
    r["cores"] = cores_used(before, cpu_snapshot(servers), time.perf_counter() - t0)
    if scraped is not None:
        r["chain"] = {k: round(v, 2) for k, v in chain(*scraped, r, args.concurrency).items()}
    if r["calls"] >= len(visits):
        print("  warning: every prepared visit was settled; raise --visits", flush=True)
    print(f"  Settle: {_figures(r)}  errors {r['errors']}  calls {r['calls']}", flush=True)
    print(f"  cores busy: {r['cores']}", flush=True)
    if "chain" in r:
        c = r["chain"]
        print(
            f"  chain: {c['settles_per_center_call']:.1f} settles a center call,"
            f" {c['center_calls_per_s']:.0f} calls/s, the center {c['center_ms_per_call']:.1f} ms"
            f" a call; a settle {c['front_handler_ms_per_settle']:.1f} ms in the front-end's"
            f" handler, {c['client_ms_per_settle']:.1f} ms as the generator sees it",
            flush=True,
        )
    return r


def local_mode(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    print("local mode (front-end alone)", flush=True)
    front = LocalServer(tmp / "local.db", workers=args.front_workers, log=tmp / "local.log")
    with running(front):
        r = settle_load(front, args)
    acked = r["calls"] - r["errors"]
    r["front_rows"] = sqlite_count(front.db, "SELECT COUNT(*) FROM settlements")
    r["books_balance"] = acked == r["front_rows"]
    if not r["books_balance"]:
        print(f"  BOOKS: {acked} acknowledged, {r['front_rows']} in SQLite", flush=True)
    return r


def center_mode(tmp: Path, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    print(f"center mode, {workers} center worker(s)", flush=True)
    ports = (free_port(), free_port())  # the front-end's and the center's metrics
    with fresh_database(args.pg) as dsn, ExitStack() as stack:
        center = stack.enter_context(
            running(
                LocalServer(
                    dsn,
                    workers=workers,
                    extra=["--role", "center", "--metrics-port", str(ports[1])],
                    log=tmp / f"center-w{workers}.log",
                )
            )
        )
        front = stack.enter_context(
            running(
                LocalServer(
                    tmp / f"front-w{workers}.db",
                    workers=args.front_workers,
                    extra=[
                        *("--mode", "center", "--center-target", center.target),
                        *("--metrics-port", str(ports[0])),
                    ],
                    log=tmp / f"front-w{workers}.log",
                )
            )
        )
        r = settle_load(front, args, center, ports)
        stack.close()  # both stopped (drained): nothing in flight when the books are read
        acked = r["calls"] - r["errors"]
        r["center_rows"] = pg_count(dsn, "SELECT COUNT(*) FROM settlements")
        r["front_rows"] = sqlite_count(front.db, "SELECT COUNT(*) FROM settlements")
    r["workers"] = workers
    r["books_balance"] = acked == r["center_rows"] == r["front_rows"]
    print(
        f"  books: {acked} acknowledged, {r['center_rows']} at the center, {r['front_rows']}"
        f" at the front-end: {'balance' if r['books_balance'] else 'DO NOT BALANCE'}",
        flush=True,
    )
    return r


def drain(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    print(f"forwarder drain, backlog {args.backlog}", flush=True)
    port = free_port()
    unsent_q = "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL"
    front = LocalServer(
        tmp / "drain.db",
        workers=1,
        extra=["--center-target", f"127.0.0.1:{port}"],
        env={"MEDSETTLE_CENTER_DEADLINE_S": "1"},
        log=tmp / "drain-front.log",
    )
    with running(front):
        sign_no, visits = prepare(front, args.backlog)
        t0 = time.perf_counter()
        # No time limit but the visits themselves: every prepared visit is settled.
        r = run_load(
            "settle", front.target, sign_no, visits, args.clients, args.concurrency, 3600.0
        )
        dt = time.perf_counter() - t0
        acked = r["calls"] - r["errors"]
        print(
            f"  settled {acked} ({r['errors']} errors) in {dt:.1f} s ({r['per_s']:.0f}/s)",
            flush=True,
        )
        backlog = sqlite_count(front.db, unsent_q)
        print(f"  outbox: {backlog} unsent", flush=True)
        with fresh_database(args.pg) as dsn:
            center = LocalServer(
                dsn,
                port=port,
                workers=args.drain_center_workers,
                extra=["--role", "center"],
                log=tmp / "drain-center.log",
            )
            with running(center):
                servers = {"front_end": front, "center": center}
                cpu0 = cpu_snapshot(servers)
                t_serving = time.perf_counter()
                t_first: float | None = None
                left_first = backlog
                left = backlog
                deadline = t_serving + args.drain_timeout
                while left > 0 and time.perf_counter() < deadline:
                    time.sleep(0.05)
                    left = sqlite_count(front.db, unsent_q)
                    if t_first is None and left < backlog:
                        t_first, left_first = time.perf_counter(), left
                t_done = time.perf_counter()
                cores = cores_used(cpu0, cpu_snapshot(servers), t_done - t_serving)
            center_rows = pg_count(dsn, "SELECT COUNT(*) FROM settlements")
    front_rows = sqlite_count(front.db, "SELECT COUNT(*) FROM settlements")
    drained = left_first - left if t_first is not None else 0
    span = t_done - t_first if t_first is not None else 0.0
    out = {
        "settle_phase": r,
        "acknowledged": acked,
        "backlog": backlog,
        "unsent_at_end": left,
        "first_batch_after_s": (t_first - t_serving) if t_first is not None else None,
        "drain_s": span,
        "drain_per_s": drained / span if span > 0 else None,
        "end_to_end_s": t_done - t_serving,
        "end_to_end_per_s": (backlog - left) / (t_done - t_serving),
        "center_rows": center_rows,
        "front_rows": front_rows,
        "cores_while_draining": cores,
        "books_balance": left == 0 and acked == backlog == center_rows == front_rows,
    }
    if left:
        print(f"  TIMED OUT after {args.drain_timeout:.0f} s with {left} unsent", flush=True)
    print(
        f"  drained {backlog - left} in {out['end_to_end_s']:.1f} s from the center serving"
        f" (first batch after {out['first_batch_after_s'] or 0:.1f} s):"
        f" {out['drain_per_s'] or 0:.0f} settlements/s; center holds {center_rows},"
        f" front-end {front_rows}: {'balance' if out['books_balance'] else 'DO NOT BALANCE'}",
        flush=True,
    )
    print(f"  cores busy while draining: {cores}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pg", default=ADMIN_DSN, help="PostgreSQL server (admin database DSN)")
    ap.add_argument("--front-workers", type=int, default=1, help="front-end processes")
    ap.add_argument("--clients", type=int, default=1, help="load generator processes")
    ap.add_argument("--concurrency", type=int, default=32, help="calls in flight, all clients")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    ap.add_argument("--visits", type=int, default=20_000, help="prepared visits per measurement")
    ap.add_argument(
        "--center-workers", default="1,2", help="center worker counts to measure, in order"
    )
    ap.add_argument("--backlog", type=int, default=100_000, help="settlements in the outbox")
    ap.add_argument("--drain-center-workers", type=int, default=1)
    ap.add_argument("--drain-timeout", type=float, default=600.0, help="give up after (s)")
    ap.add_argument("--quick", action="store_true", help="smoke run, about a minute")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.visits, args.backlog = 3.0, 6_000, 3_000
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medsettle-bench-center-") as tmp_s:
        tmp = Path(tmp_s)
        local = local_mode(tmp, args)
        centers = [
            center_mode(tmp, args, int(w)) for w in args.center_workers.split(",") if w.strip()
        ]
        for c in centers:
            c["ratio_to_local"] = c["per_s"] / local["per_s"]
            print(
                f"center mode, {c['workers']} worker(s) / local mode = {c['ratio_to_local']:.2f}",
                flush=True,
            )
        drained = drain(tmp, args) if args.backlog > 0 else None
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    out = {"args": vars(args), "local": local, "center": centers, "drain": drained}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
