"""Assembles and runs the gRPC server: services, health, reflection, worker processes.

One worker serves in-process. Several workers are separate processes started with `spawn`
(gRPC must not be forked once initialised), each with its own grpc.aio server bound to the
same port with SO_REUSEPORT, its own store writer and reader threads over the same SQLite
file. The parent creates or upgrades the schema (and seeds the demo data) before any worker
starts, forwards SIGTERM/SIGINT to the workers and waits for them: each stops taking calls,
lets in-flight calls finish within `grace_s`, flushes its store and exits.

A server that cannot start (its port taken, its database's directory missing, a database URL
it cannot use, a center without its data key) says why in one line on stderr and exits 1;
no secret of a database URL is ever printed. The health service follows the store: NOT_SERVING
while it cannot write, SERVING again once a write commits.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from medsettle.v1 import (
    catalog_pb2,
    center_pb2,
    common_pb2,
    reconciliation_pb2,
    settlement_pb2,
)
from server import background, demo_data, metrics, peers
from server.center_link import CenterRoutes
from server.config import Config
from server.domain.center import CenterEnv
from server.domain.common import Env, now_ms
from server.domain.nodes import node_instance
from server.domain.settle import OfflineLimits
from server.forwarder import Forwarder
from server.refdata import RefData
from server.refdata_pull import RefdataPuller
from server.security import audit, roles
from server.security.payload import PayloadKeys
from server.security.payload import load_keys as load_payload_keys
from server.security.pii import Vault
from server.security.signing import RequestVerifier, load_keys
from server.services.auditing import AuditPruner, FrontendAuditor
from server.services.base import Access, Deadlines, Guards, generic_handler
from server.services.catalog import CatalogService
from server.services.center import CenterReconciliationService, CenterService
from server.services.center_mode import CenterMode
from server.services.reconciliation import ReconciliationService
from server.services.settlement import Calls, SettlementService
from server.store import pg
from server.store.sqlite import Store, init_db

log = logging.getLogger("medsettle")
Closer = Callable[[], Awaitable[None]]
HealthStatus = Any  # health_pb2.HealthCheckResponse.ServingStatus


class StartError(Exception):
    """Why this server cannot start, in one line for its operator."""


# Failures to start that are the set-up's (files, addresses, databases, keys), not a bug.
SETUP_ERRORS = (StartError, ValueError, OSError, sqlite3.Error, psycopg.Error)

_URL_SECRET = re.compile(r"(://[^:/@\s]*:)[^@\s]*(@)")
_PARAM_SECRET = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` (a database URL or DSN, or a message quoting one) without its password."""
    return _PARAM_SECRET.sub(r"\1***", _URL_SECRET.sub(r"\1***\2", text))


def start_failure(cfg: Config, exc: BaseException) -> str:
    """The one line that says why the server did not start."""
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
        where = os.path.dirname(os.path.abspath(cfg.db))
        reason = f"{cfg.db}: cannot open the database (does {where} exist and is it writable?)"
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = " ".join(lines[:2]) or type(exc).__name__
    log.debug("could not start", exc_info=exc)  # the traceback, for a debug log level
    return f"medsettle serve: cannot start: {redact(reason)}"


SERVICES = {
    "medsettle.v1.Settlement": settlement_pb2.DESCRIPTOR.services_by_name["Settlement"],
    "medsettle.v1.Catalog": catalog_pb2.DESCRIPTOR.services_by_name["Catalog"],
    "medsettle.v1.Reconciliation": reconciliation_pb2.DESCRIPTOR.services_by_name["Reconciliation"],
}


CENTER_SERVICES = {
    "medsettle.v1.Center": center_pb2.DESCRIPTOR.services_by_name["Center"],
    "medsettle.v1.Reconciliation": SERVICES["medsettle.v1.Reconciliation"],
}


def make_env(cfg: Config) -> Env:
    return Env(
        refdata=RefData(),
        node_id=cfg.node_id,
        sign_ttl_s=cfg.sign_ttl_s,
        tz_offset_min=cfg.tz_offset_min,
        mode=common_pb2.LOCAL if cfg.mode == "local" else common_pb2.CENTER,
        max_lines_per_call=cfg.max_lines_per_call,
        max_lines_per_visit=cfg.max_lines_per_visit,
        keys=(keys := cfg.data_keys()),
        pii=Vault(keys, cfg.pii_cipher),
        max_line_fee_fen=cfg.max_line_fee_fen,
        max_visit_fee_fen=cfg.max_visit_fee_fen,
        signin_max_failures=cfg.signin_max_failures,
        signin_lockout_s=cfg.signin_lockout_s,
    )


def prepare(cfg: Config) -> None:
    """Schema migrations and the demo data, once, before any worker serves."""
    if cfg.role != "center":
        where = os.path.dirname(os.path.abspath(cfg.db))
        if not os.path.isdir(where):
            raise StartError(f"db: {cfg.db}: the directory {where} does not exist")
    # A center without its data key does not start; a front-end's default key is made here,
    # once, before any worker reads it.
    keys = cfg.data_keys()
    vault = Vault(keys, cfg.pii_cipher)
    if cfg.role == "center":
        pg.init_db(cfg.db, keys)
        if cfg.demo and demo_data.seed_center(cfg.db, vault):
            log.info("demo persons and policy loaded into the center database")
        return
    init_db(cfg.db, keys)
    if cfg.demo:
        store = Store(cfg.db, readers=1)
        try:
            if demo_data.seed(store, vault):
                log.info("demo data set loaded into %s", cfg.db)
        finally:
            store.close()


async def _handlers(
    cfg: Config, index: int, healthy: Callable[[bool], None]
) -> tuple[list[grpc.GenericRpcHandler], dict[str, Any], Closer]:
    """The services of this role over its open store, and how to close the store;
    `healthy` hears whether the store can write."""
    deadlines = Deadlines(cfg.require_deadline, cfg.max_deadline_s)
    if cfg.role == "center":
        pg_store = pg.PgStore(cfg.db)
        await pg_store.open()
        keys = cfg.data_keys()
        center_env = CenterEnv.new(
            cfg.tz_offset_min, Vault(keys, cfg.pii_cipher), cfg.max_visit_fee_fen
        )
        center = CenterService(
            pg_store, center_env, cfg.db, keys.audit, cfg.max_refusal_audits_per_s
        )
        plaintext = cfg.tls() is None
        if plaintext and index == 0:
            log.warning(
                "center without TLS: its services answer any caller (development only);"
                " production serves front-ends over mutual TLS"
            )
        access = Access(roles.CENTER_RULES, by_peer=True, plaintext_open=plaintext)
        guards = Guards(deadlines, access, auditor=center.auditor)
        center_pruner = None
        if index == 0:
            days = cfg.audit_retention_days

            async def prune_op(conn: pg.Conn) -> int:
                return await pg.audit_prune(conn, keys.audit, now_ms(), days)

            center_pruner = AuditPruner(lambda: pg_store.transaction(prune_op), days)
            center_pruner.start()
        handlers = [
            generic_handler(CENTER_SERVICES["medsettle.v1.Center"], center, guards),
            generic_handler(
                CENTER_SERVICES["medsettle.v1.Reconciliation"],
                CenterReconciliationService(cfg.db, cfg.max_message_bytes),
                guards,
            ),
        ]

        async def close_pg() -> None:
            if center_pruner is not None:
                await center_pruner.stop()
            await center.auditor.refusals.close()  # the pending summary, before the pool goes
            await pg_store.close()

        return handlers, CENTER_SERVICES, close_pg
    store = Store(cfg.db, batch_max=cfg.commit_batch_max, readers=cfg.readers)
    store.watch(healthy)
    env = make_env(cfg)
    tls = cfg.tls()
    routes: CenterRoutes | None = CenterRoutes(
        cfg.center_target,
        cfg.center_routes(),
        cfg.center_deadline_s,
        tls.channel_credentials() if tls and tls.ca else None,
        # Every worker names this machine to the center (server/domain/nodes.py).
        instance_id=node_instance(cfg.db) if cfg.center_target or cfg.centers else "",
    )
    if not routes:
        routes = None
    center_mode = None
    if routes is not None and cfg.mode == "center":
        limits = (
            OfflineLimits(cfg.offline_max_medfee_fen, cfg.offline_max_per_day)
            if cfg.offline_fallback
            else None
        )
        center_mode = CenterMode(store, env, routes, limits, cfg.center_retry_grace_s)
    # One forwarder per front-end, in its first worker: local mode forwards everything,
    # center mode what it settled offline.
    forwarder = puller = None
    pruner = None
    if index == 0:
        key, days = env.keys.audit, cfg.audit_retention_days
        pruner = AuditPruner(
            lambda: store.write(lambda conn: audit.prune(conn, key, now_ms(), days)), days
        )
        pruner.start()
    if routes is not None and index == 0:
        forwarder = Forwarder(store, env, routes)
        forwarder.start()
        if cfg.refdata_pull_s > 0:
            puller = RefdataPuller(store, env, routes, cfg.refdata_pull_s)
            puller.start()
    verifier = (
        RequestVerifier(load_keys(cfg.signing_keys), cfg.signing_window_s * 1000)
        if cfg.signing == "required"
        else None
    )
    access = Access(roles.FRONTEND_RULES)  # operator roles, checked by `authenticate`
    # One auditor for the worker: its budget of refusal records is the worker's.
    auditor = FrontendAuditor(store, env.keys.audit, cfg.max_refusal_audits_per_s)
    payload = (
        PayloadKeys(load_payload_keys(cfg.payload_keys))
        if cfg.payload_encryption == "sm4-gcm"
        else None
    )
    settlement = SettlementService(store, env, center_mode, auditor)
    guards = Guards(deadlines, access, verifier, payload, auditor, admit=settlement.calls.admit)
    handlers = [
        generic_handler(SERVICES["medsettle.v1.Settlement"], settlement, guards),
        generic_handler(
            SERVICES["medsettle.v1.Catalog"],
            CatalogService(Calls(store, env, "Catalog", auditor)),
            guards,
        ),
        generic_handler(
            SERVICES["medsettle.v1.Reconciliation"],
            ReconciliationService(
                Calls(store, env, "Reconciliation", auditor), cfg.max_message_bytes, routes
            ),
            guards,
        ),
    ]

    async def close_sqlite() -> None:
        if pruner is not None:
            await pruner.stop()
        if forwarder is not None:
            await forwarder.stop()
        if puller is not None:
            await puller.stop()
        if routes is not None:
            await routes.close()
        await auditor.close()
        await asyncio.get_running_loop().run_in_executor(None, store.close)

    return handlers, SERVICES, close_sqlite


class Health:
    """The health service's statuses, set from synchronous code too (the store's watch)."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self.names = [""]  # the server, then each service
        self._tasks: set[asyncio.Task[None]] = set()

    async def set_all(self, status: HealthStatus) -> None:
        for name in self.names:
            await self.servicer.set(name, status)

    def store_writable(self, ok: bool) -> None:
        """NOT_SERVING while the store cannot write; SERVING once a write commits again."""
        serving = health_pb2.HealthCheckResponse
        status = serving.SERVING if ok else serving.NOT_SERVING
        task = asyncio.get_running_loop().create_task(self.set_all(status))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def serve_worker(cfg: Config, index: int = 0) -> None:
    """Run one server until SIGTERM/SIGINT, then drain and stop."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if cfg.metrics_port:
        interceptors.append(metrics.MetricsInterceptor())
    # Inside the metrics: a call refused for its peer's count is counted with its code.
    interceptors.append(peers.PeerCalls(cfg.max_calls_per_peer))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_concurrent_streams", cfg.max_streams_per_connection),
            ("grpc.http2.min_ping_interval_without_data_ms", int(cfg.min_ping_interval_s * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_permit_without_calls", 0),
        ],
    )
    health_ = Health()
    handlers, services, close = await _handlers(cfg, index, health_.store_writable)
    health_.names.extend(services)
    server.add_generic_rpc_handlers(handlers)
    if cfg.metrics_port:
        metrics.initialise([*services.values(), health_pb2.DESCRIPTOR.services_by_name["Health"]])
    health_pb2_grpc.add_HealthServicer_to_server(health_.servicer, server)
    reflection.enable_server_reflection(
        [
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    tls = cfg.tls()
    address = f"{cfg.host}:{cfg.port}"
    try:
        port = (
            server.add_secure_port(address, tls.server_credentials(cfg.require_client_cert))
            if tls and tls.cert
            else server.add_insecure_port(address)
        )
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        port = 0
    if port == 0:
        await close()
        raise StartError(f"cannot listen on {address}: in use, or not an address of this host")
    await server.start()
    await health_.set_all(health_pb2.HealthCheckResponse.SERVING)
    security = "plaintext"
    if tls and tls.cert:
        security = "mutual TLS" if cfg.require_client_cert else "TLS"
    print(
        f"medsettle {cfg.role} ({cfg.mode} mode) listening on {cfg.host}:{port}"
        f" pid {os.getpid()} db {redact(cfg.db)} ({security})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await health_.servicer.enter_graceful_shutdown()
    await server.stop(cfg.grace_s)
    await close()
    if (reason := background.fatal_reason()) is not None:
        raise SystemExit(f"medsettle: stopped: {reason}")  # exit 1, the reason on stderr
    print(f"medsettle worker {os.getpid()} stopped cleanly", flush=True)


def _no_file_size_signal() -> None:
    """A write beyond a file-size limit (RLIMIT_FSIZE) fails like a full disk (the store
    answers UNAVAILABLE and recovers) instead of killing the process with SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


# A worker's exit code when it could not start (it has said why): the parent adds nothing.
START_FAILED = 3


def _worker_main(cfg: Config, index: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _no_file_size_signal()
    try:
        asyncio.run(serve_worker(cfg, index))
    except SETUP_ERRORS as exc:
        print(start_failure(cfg, exc), file=sys.stderr, flush=True)
        sys.exit(START_FAILED)


def serve(cfg: Config) -> int:
    """Prepare the database, then serve with `cfg.workers` processes; returns an exit code
    (1, after one line on stderr, when it cannot start)."""
    _no_file_size_signal()
    try:
        prepare(cfg)
        if cfg.metrics_port:
            port = metrics.serve_http(cfg.host, cfg.metrics_port)
            log.info(
                "metrics on http://%s:%d/metrics (files in %s)", cfg.host, port, cfg.metrics_dir
            )
        if cfg.workers == 1:
            asyncio.run(serve_worker(cfg))
            return 0
        if cfg.port == 0:
            raise StartError("several workers need a fixed --port (they share it)")
    except SETUP_ERRORS as exc:
        print(start_failure(cfg, exc), file=sys.stderr, flush=True)
        return 1
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(cfg, i), name=f"worker-{i}")
        for i in range(cfg.workers)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    alive = list(procs)
    while alive:  # react to the first worker that exits, whichever it is
        ready = multiprocessing.connection.wait([p.sentinel for p in alive])
        for p in [p for p in alive if p.sentinel in ready]:
            p.join()
            alive.remove(p)
            if cfg.metrics_port and p.pid is not None:
                metrics.mark_dead(p.pid)
            if p.exitcode not in (0, None) and not code:  # the first failure stops the rest
                if p.exitcode != START_FAILED:  # one that could not start has said why
                    print(
                        f"medsettle: {p.name} exited with {p.exitcode}", file=sys.stderr, flush=True
                    )
                code = 1
                forward(signal.SIGTERM, None)
    return code
