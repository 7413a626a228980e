"""Keeps a front-end on the center's policy and catalog versions: every `interval_s` it asks
for the versions after its own (PolicySince, CatalogSince) and applies them in one
transaction each. Applying bumps the reference-data generation, so every worker process
rebuilds its engine objects before its next call, while calls in flight finish on the
snapshot they started with: a swap never fails a call."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3

from medsettle.v1 import catalog_pb2, center_pb2
from server import reference
from server.background import Background
from server.common import Env, now_ms
from server.errors import ClientError
from server.frontend.center_link import CenterRoutes
from server.frontend.store.sqlite import Store

log = logging.getLogger("medsettle.refdata")


def _versions(conn: sqlite3.Connection) -> tuple[int, int]:
    policy = conn.execute("SELECT COALESCE(MAX(version), 0) FROM policies").fetchone()[0]
    catalog = conn.execute(reference.LATEST_CATALOG_SQL).fetchone()[0]
    return int(policy), int(catalog)


class RefdataPuller(Background):
    name = "refdata-pull"

    def __init__(self, store: Store, env: Env, routes: CenterRoutes, interval_s: float) -> None:
        self.store = store
        self.env = env
        self.routes = routes
        self.interval_s = interval_s

    async def _run(self) -> None:
        while True:
            try:
                await self.pull_once()
            except ClientError as exc:
                log.warning("could not pull reference data: %s", exc.message)
            await asyncio.sleep(self.interval_s)

    async def pull_once(self) -> tuple[int, int]:
        """Apply what the center has after our versions; returns (policies, items) applied."""
        link = self.routes.any_link()
        policy_v, catalog_v = await self.store.read(_versions)
        node = center_pb2.NodeHeader(node_id=self.env.node_id)
        policies = await link.policy_since(
            center_pb2.PolicySinceRequest(header=node, since_version=policy_v)
        )
        chunks = await link.catalog_since(
            catalog_pb2.DownloadCatalogRequest(since_version=catalog_v)
        )
        now = now_ms()
        applied = 0
        for pv in policies.versions:
            apply = functools.partial(reference.apply_policy_version, pv=pv, now=now)
            if await self.store.write(apply):
                applied += 1
                log.info("policy version %d from the center is in force", pv.version)
        items = [it for c in chunks for it in c.items]
        changed = 0
        if chunks and chunks[0].version > catalog_v:
            latest = chunks[0].version
            changed = await self.store.write(
                lambda conn: reference.apply_catalog_increment(conn, latest, items, now)
            )
            log.info("catalog version %d from the center: %d items changed", latest, changed)
        return applied, changed
