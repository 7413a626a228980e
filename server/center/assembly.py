"""The center's assembly: its gRPC services (`Center` for front-ends, `Reconciliation`)
over its PostgreSQL store, the audit pruner of its first worker, and its schema before any
worker serves. server/app.py runs it for `role = "center"`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc

from medsettle.v1 import center_pb2, reconciliation_pb2
from server.auditing import AuditPruner
from server.center.services import CenterReconciliationService, CenterService
from server.center.settle import CenterEnv
from server.center.store import pg
from server.common import now_ms
from server.config import Config
from server.rpc import Access, Deadlines, Guards, generic_handler
from server.security import roles

log = logging.getLogger("medsettle")
Closer = Callable[[], Awaitable[None]]

SERVICES = {
    "medsettle.v1.Center": center_pb2.DESCRIPTOR.services_by_name["Center"],
    "medsettle.v1.Reconciliation": reconciliation_pb2.DESCRIPTOR.services_by_name["Reconciliation"],
}


def prepare(cfg: Config) -> None:
    """Schema migrations, once, before any worker serves. A center
    without its data key does not start."""
    pg.init_db(cfg.db, cfg.data_keys())


async def assemble(
    cfg: Config, index: int, healthy: Callable[[bool], None]
) -> tuple[list[grpc.GenericRpcHandler], Closer]:
    """The center's services over its open store, and how to close it. (`healthy` is the
    front-end's store watch; the center's pool reconnects on its own.)"""
    deadlines = Deadlines(cfg.require_deadline, cfg.max_deadline_s)
    pg_store = pg.PgStore(cfg.db)
    await pg_store.open()
    keys = cfg.data_keys()
    center_env = CenterEnv.new(cfg.tz_offset_min, keys, cfg.pii_cipher, cfg.max_visit_fee_fen)
    center = CenterService(
        pg_store,
        center_env,
        cfg.db,
        keys.audit,
        cfg.max_refusal_audits_per_s,
        cfg.center_settle_batch,
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
        generic_handler(SERVICES["medsettle.v1.Center"], center, guards),
        generic_handler(
            SERVICES["medsettle.v1.Reconciliation"],
            CenterReconciliationService(cfg.db, cfg.max_message_bytes),
            guards,
        ),
    ]

    async def close_pg() -> None:
        if center_pruner is not None:
            await center_pruner.stop()
        await center.auditor.refusals.close()  # the pending summary, before the pool goes
        await pg_store.close()

    return handlers, close_pg
