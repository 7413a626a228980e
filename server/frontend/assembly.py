"""The front-end's assembly: its gRPC services (`Settlement`, `Catalog`, `Reconciliation`)
over its SQLite store, and in its first worker the audit pruner, the forwarder and the
reference-data puller; center mode when configured; its schema before any worker serves.
server/app.py runs it for `role = "frontend"`."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

import grpc

from medsettle.v1 import catalog_pb2, common_pb2, reconciliation_pb2, settlement_pb2
from server.auditing import AuditPruner
from server.common import Env, now_ms
from server.config import Config, Mode
from server.errors import StartError
from server.frontend.auditing import FrontendAuditor
from server.frontend.center_link import CenterRoutes
from server.frontend.center_mode import CenterMode
from server.frontend.forwarder import Forwarder
from server.frontend.refdata_pull import RefdataPuller
from server.frontend.services.catalog import CatalogService
from server.frontend.services.reconciliation import ReconciliationService
from server.frontend.services.settlement import Calls, SettlementService
from server.frontend.settle import OfflineLimits
from server.frontend.store.sqlite import Store, init_db
from server.nodes import node_instance
from server.refdata import RefData
from server.rpc import Access, Deadlines, Guards, generic_handler
from server.security import audit, roles
from server.security.payload import PayloadKeys
from server.security.payload import load_keys as load_payload_keys
from server.security.pii import Vault
from server.security.signing import RequestVerifier, load_keys

log = logging.getLogger("medsettle")
Closer = Callable[[], Awaitable[None]]

SERVICES = {
    "medsettle.v1.Settlement": settlement_pb2.DESCRIPTOR.services_by_name["Settlement"],
    "medsettle.v1.Catalog": catalog_pb2.DESCRIPTOR.services_by_name["Catalog"],
    "medsettle.v1.Reconciliation": reconciliation_pb2.DESCRIPTOR.services_by_name["Reconciliation"],
}


def make_env(cfg: Config) -> Env:
    return Env(
        refdata=RefData(),
        node_id=cfg.node_id,
        sign_ttl_s=cfg.sign_ttl_s,
        tz_offset_min=cfg.tz_offset_min,
        mode=common_pb2.LOCAL if cfg.mode is Mode.LOCAL else common_pb2.CENTER,
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
    """Schema migrations, once, before any worker serves; the default
    data key (`<db>.key`) is made here, once, before any worker reads it."""
    where = os.path.dirname(os.path.abspath(cfg.db))
    if not os.path.isdir(where):
        raise StartError(f"db: {cfg.db}: the directory {where} does not exist")
    init_db(cfg.db, cfg.data_keys())


async def assemble(
    cfg: Config, index: int, healthy: Callable[[bool], None]
) -> tuple[list[grpc.GenericRpcHandler], Closer]:
    """The front-end's services over its open store, and how to close the store;
    `healthy` hears whether the store can write."""
    deadlines = Deadlines(cfg.require_deadline, cfg.max_deadline_s)
    store = Store(cfg.db, batch_max=cfg.commit_batch_max, readers=cfg.readers)
    store.watch(healthy)
    env = make_env(cfg)
    tls = cfg.tls()
    routes: CenterRoutes | None = CenterRoutes(
        cfg.center_target,
        cfg.center_routes(),
        cfg.center_deadline_s,
        tls.channel_credentials() if tls and tls.ca else None,
        # Every worker names this machine to the center (server/nodes.py).
        instance_id=node_instance(cfg.db) if cfg.center_target or cfg.centers else "",
        batch=cfg.center_batch,
    )
    if not routes:
        routes = None
    center_mode = None
    if routes is not None and cfg.mode is Mode.CENTER_SIDE:
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

    return handlers, close_sqlite
