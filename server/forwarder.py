"""Store-and-forward (local mode): sends the outbox to the center in order, in batches, and
marks what the center acknowledged. Each settlement or cancel was written to the outbox in
the same transaction as itself, so nothing committed can be missed; the center records each
at most once, so a batch sent twice (a lost acknowledgement, a restart) changes nothing.

One forwarder runs per front-end (in worker 0). When the center does not answer it backs off
(doubling up to `max_backoff_s`) and the backlog drains by itself when the link returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Any

from clients.pb.medsettle.v1 import catalog_pb2, center_pb2, common_pb2
from server import metrics
from server.background import Background
from server.center_link import CenterRoutes
from server.domain.common import Env, now_ms
from server.errors import ClientError
from server.security.pii import Vault
from server.store import ACC_FIELDS
from server.store.sqlite import Store

log = logging.getLogger("medsettle.forwarder")


def _acc(year: int, pool: str, values: dict[str, int]) -> catalog_pb2.Accumulator:
    return catalog_pb2.Accumulator(year=year, pool=pool, **{f: values[f] for f in ACC_FIELDS})


def pending(
    conn: sqlite3.Connection, vault: Vault, limit: int
) -> list[tuple[int, center_pb2.ForwardItem, tuple[str, str]]]:
    """The oldest unsent outbox rows as forward items, each with (institution, the person's
    insured region): a batch goes to one center for one institution."""
    rows = conn.execute(
        "SELECT o.id, o.kind, o.ref, o.created_at, s.fixmedins_code, s.info, s.acc_year,"
        " s.acc_pool, s.acc_delta, s.acc_before, s.cancel_id, p.insuplc_admdvs FROM outbox o"
        " JOIN settlements s ON s.setl_id = o.ref JOIN persons p ON p.psn_no = s.psn_no"
        " WHERE o.sent_at IS NULL ORDER BY o.id LIMIT ?",
        (limit,),
    ).fetchall()
    out = []
    for (
        oid,
        kind,
        ref,
        created,
        code,
        info,
        year,
        pool,
        delta_s,
        before_s,
        cancel_id,
        region,
    ) in rows:
        item = center_pb2.ForwardItem(seq=oid, kind=kind, setl_id=ref)
        if kind == "settle":
            before = json.loads(before_s)
            delta = json.loads(delta_s)
            item.setlinfo.CopyFrom(common_pb2.SetlInfo.FromString(vault.open_setlinfo(ref, info)))
            item.accumulators_before.CopyFrom(_acc(year, pool, before))
            item.accumulators_after.CopyFrom(
                _acc(year, pool, {f: before[f] + delta[f] for f in ACC_FIELDS})
            )
        else:
            item.cancel_id = cancel_id or ""
            item.cancel_time_ms = created
        out.append((oid, item, (code, region)))
    return out


def backlog_gauges(conn: sqlite3.Connection) -> None:
    """Set the outbox gauges: unsent rows and the age of the oldest."""
    (n,) = conn.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()
    oldest = conn.execute(
        "SELECT created_at FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1"
    ).fetchone()
    metrics.OUTBOX_BACKLOG.set(n)
    metrics.OUTBOX_OLDEST_AGE.set(max(0, now_ms() - oldest[0]) / 1000 if oldest else 0)


class Forwarder(Background):
    name = "forwarder"

    def __init__(
        self,
        store: Store,
        env: Env,
        routes: CenterRoutes,
        *,
        batch: int = 200,
        idle_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.store = store
        self.env = env
        self.routes = routes
        self.batch = batch
        self.idle_s = idle_s
        self.max_backoff_s = max_backoff_s
        self.sent = 0
        self.failures = 0

    async def _run(self) -> None:
        backoff = self.idle_s
        while True:
            await self.store.read(backlog_gauges)
            try:
                n = await self.drain_once()
            except ClientError as exc:  # the center is unreachable or refused the batch
                self.failures += 1
                backoff = min(self.max_backoff_s, backoff * 2)
                log.warning("forwarding paused %.1f s: %s", backoff, exc.message)
                await asyncio.sleep(backoff)
                continue
            backoff = self.idle_s
            if n < self.batch:
                await asyncio.sleep(self.idle_s)

    async def drain_once(self) -> int:
        """Send one batch per institution found among the oldest rows; returns rows sent."""
        vault = self.env.pii
        items = await self.store.read(lambda conn: pending(conn, vault, self.batch))
        if not items:
            return 0
        groups: dict[tuple[str, str], list[tuple[int, center_pb2.ForwardItem]]] = {}
        for oid, item, key in items:
            groups.setdefault(key, []).append((oid, item))
        done: list[int] = []
        for (code, region), part in groups.items():
            req = center_pb2.ForwardRequest(
                header=center_pb2.NodeHeader(node_id=self.env.node_id, fixmedins_code=code),
                items=[item for _, item in part],
            )
            resp = await self.routes.link_for(region).forward(req)
            for r in resp.results:
                if r.outcome == center_pb2.REJECTED:
                    log.error("center rejected outbox row %d: %s", r.seq, r.detail)
            done += [oid for oid, _ in part]
        now = now_ms()

        def mark(conn: sqlite3.Connection) -> Any:
            conn.executemany(
                "UPDATE outbox SET sent_at = ? WHERE id = ?", [(now, oid) for oid in done]
            )

        await self.store.write(mark)
        self.sent += len(done)
        return len(done)
