"""Assembles and runs the gRPC server: services, health, reflection, worker processes.

One worker serves in-process. Several workers are separate processes started with `spawn`
(gRPC must not be forked once initialised), each with its own grpc.aio server bound to the
same port with SO_REUSEPORT, its own store writer and reader threads over the same SQLite
file. The parent creates or upgrades the schema (and seeds the demo data) before any worker
starts, forwards SIGTERM/SIGINT to the workers and waits for them: each stops taking calls,
lets in-flight calls finish within `grace_s`, flushes its store and exits.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clients.pb.medsettle.v1 import (
    catalog_pb2,
    center_pb2,
    common_pb2,
    reconciliation_pb2,
    settlement_pb2,
)
from server import demo_data, metrics
from server.center_link import CenterRoutes
from server.config import Config
from server.domain.center import CenterEnv
from server.domain.common import Env, now_ms
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
    cfg: Config, index: int
) -> tuple[list[grpc.GenericRpcHandler], dict[str, Any], Closer]:
    """The services of this role over its open store, and how to close the store."""
    deadlines = Deadlines(cfg.require_deadline, cfg.max_deadline_s)
    if cfg.role == "center":
        pg_store = pg.PgStore(cfg.db)
        await pg_store.open()
        keys = cfg.data_keys()
        center_env = CenterEnv.new(cfg.tz_offset_min, Vault(keys, cfg.pii_cipher))
        center = CenterService(pg_store, center_env, cfg.db, keys.audit)
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
            await pg_store.close()

        return handlers, CENTER_SERVICES, close_pg
    store = Store(cfg.db, batch_max=cfg.commit_batch_max, readers=cfg.readers)
    env = make_env(cfg)
    tls = cfg.tls()
    routes: CenterRoutes | None = CenterRoutes(
        cfg.center_target,
        cfg.center_routes(),
        cfg.center_deadline_s,
        tls.channel_credentials() if tls and tls.ca else None,
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
        center_mode = CenterMode(store, env, routes, limits)
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
    auditor = FrontendAuditor(store, env.keys.audit)
    payload = (
        PayloadKeys(load_payload_keys(cfg.payload_keys))
        if cfg.payload_encryption == "sm4-gcm"
        else None
    )
    guards = Guards(deadlines, access, verifier, payload, auditor)
    handlers = [
        generic_handler(
            SERVICES["medsettle.v1.Settlement"],
            SettlementService(store, env, center_mode),
            guards,
        ),
        generic_handler(
            SERVICES["medsettle.v1.Catalog"],
            CatalogService(Calls(store, env, "Catalog")),
            guards,
        ),
        generic_handler(
            SERVICES["medsettle.v1.Reconciliation"],
            ReconciliationService(Calls(store, env, "Reconciliation"), cfg.max_message_bytes),
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
        await asyncio.get_running_loop().run_in_executor(None, store.close)

    return handlers, SERVICES, close_sqlite


async def serve_worker(cfg: Config, index: int = 0) -> None:
    """Run one server until SIGTERM/SIGINT, then drain and stop."""
    interceptors = []
    if cfg.metrics_port:
        interceptors.append(metrics.MetricsInterceptor())
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
    handlers, services, close = await _handlers(cfg, index)
    server.add_generic_rpc_handlers(handlers)
    if cfg.metrics_port:
        metrics.initialise([*services.values(), health_pb2.DESCRIPTOR.services_by_name["Health"]])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
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
    port = (
        server.add_secure_port(address, tls.server_credentials(cfg.require_client_cert))
        if tls and tls.cert
        else server.add_insecure_port(address)
    )
    if port == 0:
        raise SystemExit(f"cannot listen on {cfg.host}:{cfg.port}")
    await server.start()
    for name in ("", *services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    security = "plaintext"
    if tls and tls.cert:
        security = "mutual TLS" if cfg.require_client_cert else "TLS"
    print(
        f"medsettle {cfg.role} ({cfg.mode} mode) listening on {cfg.host}:{port}"
        f" pid {os.getpid()} db {cfg.db} ({security})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(cfg.grace_s)
    await close()
    print(f"medsettle worker {os.getpid()} stopped cleanly", flush=True)


def _worker_main(cfg: Config, index: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve_worker(cfg, index))


def serve(cfg: Config) -> int:
    """Prepare the database, then serve with `cfg.workers` processes; returns an exit code."""
    prepare(cfg)
    if cfg.metrics_port:
        port = metrics.serve_http(cfg.host, cfg.metrics_port)
        log.info("metrics on http://%s:%d/metrics (files in %s)", cfg.host, port, cfg.metrics_dir)
    if cfg.workers == 1:
        asyncio.run(serve_worker(cfg))
        return 0
    if cfg.port == 0:
        raise SystemExit("several workers need a fixed --port (they share it)")
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
            if p.exitcode not in (0, None):
                print(f"medsettle: {p.name} exited with {p.exitcode}", file=sys.stderr, flush=True)
                code = 1
                forward(signal.SIGTERM, None)
    return code
