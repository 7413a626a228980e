"""Runs a server in its role: the role's assembly (`ROLES`: server/frontend/assembly.py or
server/center/assembly.py) gives the services; this module adds health, reflection, the
interceptors and the worker processes.

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
from collections.abc import Awaitable, Callable, Mapping
from types import FrameType
from typing import Any, Protocol

import grpc
import psycopg
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server import background, metrics, peers
from server.center import assembly as center_assembly
from server.config import Config, Role
from server.demo import dataset as demo_data
from server.errors import StartError
from server.frontend import assembly as frontend_assembly

log = logging.getLogger("medsettle")
Closer = Callable[[], Awaitable[None]]
HealthStatus = Any  # health_pb2.HealthCheckResponse.ServingStatus


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


class Assembly(Protocol):
    """What a role's assembly module provides (server/frontend/assembly.py,
    server/center/assembly.py)."""

    @property
    def SERVICES(self) -> Mapping[str, ServiceDescriptor]: ...

    def prepare(self, cfg: Config) -> None: ...

    async def assemble(
        self, cfg: Config, index: int, healthy: Callable[[bool], None]
    ) -> tuple[list[grpc.GenericRpcHandler], Closer]: ...


ROLES: dict[Role, Assembly] = {Role.FRONTEND: frontend_assembly, Role.CENTER: center_assembly}


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
    role = ROLES[cfg.role]
    services = role.SERVICES
    handlers, close = await role.assemble(cfg, index, health_.store_writable)
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
        ROLES[cfg.role].prepare(cfg)
        if cfg.demo:
            demo_data.load(cfg)
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
