"""Store-and-forward (local mode): sends the outbox to the center in batches, each person's
rows in their order, and marks what the center recorded. Each settlement or cancel was
written to the outbox in the same transaction as itself, so nothing committed can be missed;
the center records each at most once, so a batch sent twice (a lost acknowledgement, a
restart) changes nothing. A round's rows go as `LANES` requests at once, split by person
(only a person's rows depend on each other's order), and the next round is read while one
is at the center.

One forwarder runs per front-end (in worker 0). When the center does not answer it backs off
(doubling up to `max_backoff_s`) and the backlog drains by itself when the link returns.

A row is marked sent only when the center answers that it holds it (APPLIED, DUPLICATE,
APPLIED_WITH_DIFFERENCE). What the center refuses is never dropped:
- REJECTED (not this node's ids, money that does not split again the same at the center, a
  person or policy version the center lacks): the row stays unsent and is logged at ERROR
  with the center's reason; it counts in the outbox backlog gauges (so the dashboard's
  backlog never drains to zero) and reconciliation with the center shows its settlement as
  "front-end only". The rows behind it go on; it is offered again every `retry_held_s` (the
  center may since have loaded what it lacked) and at every start.
- CONFLICT (the center holds this id with other content), or the center refusing this
  machine for a node id another machine holds: another front-end issues ids under this
  node, so nothing this one settles can reach the center unmixed. The forwarder stops, logs
  at ERROR what happened and what to do (give each front-end of the institution its own
  `--node-id`, and never copy `<db>.node` with a database), and the front-end stops serving
  and exits non-zero (`background.stop_serving`): a night operator finds it down with the
  reason in its log, rather than up and settling what can never be forwarded. Its unsent
  rows stay in the outbox.

Center mode leaves one more kind of row, `undo`: the cancel of a settlement the center
committed but this front-end could not keep, or may have committed when its answer was lost
(services/center_mode.py), sent as the center's CancelSettlement (idempotent by its msgid)
from its `not_before` on, until the center confirms it. A retry that keeps the settlement
here deletes the row in the same transaction (settle.record_center_settlement).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import zlib
from collections.abc import Collection
from typing import Any

import grpc

from medsettle.v1 import catalog_pb2, center_pb2, common_pb2
from server import metrics
from server.background import Background, fatal_reason, stop_serving
from server.common import Env, now_ms
from server.errors import ClientError, Unavailable
from server.frontend.center_link import CenterRoutes
from server.frontend.store.sqlite import Store
from server.nodes import node_instance
from server.persons import ACC_FIELDS
from server.security.pii import Vault

log = logging.getLogger("medsettle.forwarder")

GAUGE_EVERY_S = 1.0  # the outbox gauges' refresh while draining (scrapes are 15 s apart)

# What the center holds once it answered so: the row is sent.
RECORDED = frozenset({center_pb2.APPLIED, center_pb2.DUPLICATE, center_pb2.APPLIED_WITH_DIFFERENCE})


def _acc(year: int, pool: str, values: dict[str, int]) -> catalog_pb2.Accumulator:
    return catalog_pb2.Accumulator(year=year, pool=pool, **{f: values[f] for f in ACC_FIELDS})


# Requests in flight at once: a round's rows go in this many requests per institution and
# center, split by person, so the center decides one while it writes another (a person's
# settlements and cancels stay in one request, in their order).
LANES = 2

# An unsent outbox row as a forward item, with its route: (institution, the person's
# insured region, the person's lane).
Pending = tuple[int, center_pb2.ForwardItem, tuple[str, str, int]]


def pending(
    conn: sqlite3.Connection, vault: Vault, limit: int, held: Collection[int] = ()
) -> list[Pending]:
    """The oldest unsent outbox rows (but the `held` ones) as forward items, each with its
    route: a request goes to one center for one institution."""
    rows = conn.execute(
        "SELECT o.id, o.kind, o.ref, o.created_at, s.fixmedins_code, s.info, s.acc_year,"
        " s.acc_pool, s.acc_delta, s.acc_before, s.cancel_id, p.insuplc_admdvs, v.begndate,"
        " s.psn_no"
        " FROM outbox o JOIN settlements s ON s.setl_id = o.ref"
        " JOIN persons p ON p.psn_no = s.psn_no JOIN visits v ON v.id = s.visit_id"
        # `undo` rows are the center's cancels (`_drain_undos`), not forwarded items.
        " WHERE o.sent_at IS NULL AND o.kind IN ('settle', 'cancel')"
        " AND o.id NOT IN (SELECT value FROM json_each(?))"
        " ORDER BY o.id LIMIT ?",
        (json.dumps(sorted(held)), limit),
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
        begndate,
        psn_no,
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
            item.begndate = begndate
        else:
            item.cancel_id = cancel_id or ""
            item.cancel_time_ms = created
        out.append((oid, item, (code, region, zlib.crc32(psn_no.encode()) % LANES)))
    return out


def undo_row(region: str, req: center_pb2.CenterCancelRequest) -> bytes:
    """An `undo` row's payload: the center's region and the cancel to send there (the row's
    created_at is when it may be sent)."""
    return json.dumps({"region": region, "request": req.SerializeToString().hex()}).encode()


def undo_of(payload: bytes) -> tuple[str, center_pb2.CenterCancelRequest]:
    doc = json.loads(payload)
    return doc["region"], center_pb2.CenterCancelRequest.FromString(bytes.fromhex(doc["request"]))


def cancelled_already(exc: ClientError) -> bool:
    """The center's answer to a cancel of what it does not hold settled: nothing to do."""
    return exc.code == grpc.StatusCode.NOT_FOUND or (
        exc.code == grpc.StatusCode.FAILED_PRECONDITION and "already cancelled" in exc.message
    )


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
        # The center records a request set-wise in one transaction (center/store/batch.py),
        # so larger ones drain faster: a round of 2,000 rows is LANES requests of about
        # 1,000 settlements, 1 MB each on the wire.
        batch: int = 2000,
        idle_s: float = 0.2,
        max_backoff_s: float = 5.0,
        retry_held_s: float = 300.0,
    ) -> None:
        self.store = store
        self.env = env
        self.routes = routes
        self.batch = batch
        self.idle_s = idle_s
        self.max_backoff_s = max_backoff_s
        self.retry_held_s = retry_held_s
        self.sent = 0
        self.failures = 0
        self.held: dict[int, str] = {}  # outbox row -> why the center rejected it
        self._held_since = 0.0
        self._gauged = 0.0  # when the backlog gauges were last set (monotonic)
        # The next batch, read while the current one is at the center (`_drain_forwards`).
        self._ahead: asyncio.Future[list[Pending]] | None = None
        if not routes.instance_id:
            routes.use_instance(node_instance(store.path))

    async def _run(self) -> None:
        try:
            await self._forward_until_stopped()
        finally:
            self._drop_ahead()

    async def _forward_until_stopped(self) -> None:
        backoff = self.idle_s
        while fatal_reason() is None:
            if self.held and time.monotonic() - self._held_since >= self.retry_held_s:
                self.held.clear()  # offer the rejected rows again, in their order
                self._drop_ahead()  # it was read without them
            if time.monotonic() - self._gauged >= GAUGE_EVERY_S:
                # Counting the backlog reads every unsent row: not before every batch.
                await self.store.read(backlog_gauges)
                self._gauged = time.monotonic()
            try:
                n = await self.drain_once()
            except ClientError as exc:  # the center is unreachable or refused the batch
                if fatal_reason() is not None:  # it refused this machine: stopping
                    break
                self.failures += 1
                backoff = min(self.max_backoff_s, backoff * 2)
                log.warning("forwarding paused %.1f s: %s", backoff, exc.message)
                await asyncio.sleep(backoff)
                continue
            backoff = self.idle_s
            if n < self.batch:
                await asyncio.sleep(self.idle_s)
        log.error("forwarding stopped: %s", fatal_reason())

    async def drain_once(self) -> int:
        """Send one batch per institution found among the oldest rows; returns the rows the
        center answered for (sent, or held back)."""
        return await self._drain_undos() + await self._drain_forwards()

    async def _drain_undos(self) -> int:
        held = json.dumps(sorted(self.held))
        # Due rows only (created_at is when an undo may go): a retry that keeps the
        # settlement before then deletes the row; after then it is refused the keep.
        rows = await self.store.read(
            lambda conn: conn.execute(
                "SELECT id, ref, payload FROM outbox WHERE kind = 'undo' AND sent_at IS NULL"
                " AND created_at <= ? AND id NOT IN (SELECT value FROM json_each(?))"
                " ORDER BY id LIMIT ?",
                (now_ms(), held, self.batch),
            ).fetchall()
        )
        done: list[int] = []
        for oid, setl_id, payload in rows:
            region, req = undo_of(bytes(payload))
            try:
                await self.routes.link_for(region).cancel(req)
            except Unavailable:
                raise
            except ClientError as exc:
                if not cancelled_already(exc):  # e.g. a later settlement relied on it
                    self._hold(oid, "undo", setl_id, exc.message)
                    continue
                log.warning("undo of %s: %s; nothing left to cancel", setl_id, exc.message)
            done.append(oid)
        await self._mark_sent(done)
        return len(rows)

    async def _mark_sent(self, done: list[int]) -> None:
        if not done:
            return
        now = now_ms()

        def mark(conn: sqlite3.Connection) -> Any:
            conn.executemany(
                "UPDATE outbox SET sent_at = ? WHERE id = ?", [(now, oid) for oid in done]
            )

        await self.store.write(mark)
        self.sent += len(done)

    def _pending(self, exclude: set[int]) -> asyncio.Future[list[Pending]]:
        vault, limit = self.env.pii, self.batch
        return asyncio.ensure_future(
            self.store.read(lambda conn: pending(conn, vault, limit, exclude))
        )

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None

    async def _drain_forwards(self) -> int:
        held = set(self.held)
        ahead, self._ahead = self._ahead, None
        items = await (ahead if ahead is not None else self._pending(held))
        if not items:
            return 0
        # The next batch is read while this one is at the center; it is used only if every
        # row of this one is sent (else a row left behind would go after later ones).
        following = self._pending(held | {oid for oid, _, _ in items})
        try:
            answered, done, clash, failure = await self._send(items)
        except BaseException:
            following.cancel()
            raise
        await self._mark_sent(done)  # what the center answered for, even if a lane failed
        if len(done) == len(items):
            self._ahead = following
        else:
            following.cancel()
        if clash:
            stop_serving(clash)
        if failure is not None:
            raise failure
        return answered

    async def _send(self, items: list[Pending]) -> tuple[int, list[int], str, BaseException | None]:
        """Forward `items`, one request per route, all in flight at once; the rows answered
        for, those the center now holds, why to stop (a CONFLICT) and the first request's
        failure, if any."""
        groups: dict[tuple[str, str, int], list[tuple[int, center_pb2.ForwardItem]]] = {}
        for oid, item, route in items:
            groups.setdefault(route, []).append((oid, item))
        node = self.env.node_id
        answers = await asyncio.gather(
            *(
                self.routes.link_for(region).forward(
                    center_pb2.ForwardRequest(
                        header=center_pb2.NodeHeader(node_id=node, fixmedins_code=code),
                        items=[item for _, item in part],
                    )
                )
                for (code, region, _), part in groups.items()
            ),
            return_exceptions=True,
        )
        done: list[int] = []
        answered = 0
        clash = ""
        failure: BaseException | None = None
        for ((code, _, _), part), resp in zip(groups.items(), answers, strict=True):
            if isinstance(resp, BaseException):
                failure = failure or resp
                continue
            results = {r.seq: r for r in resp.results}
            for oid, item in part:
                r = results.get(oid)
                if r is None:  # not answered for: sent again
                    continue
                answered += 1
                if r.outcome in RECORDED:
                    done.append(oid)
                elif r.outcome == center_pb2.CONFLICT:
                    clash = clash or self._clash_reason(code, item, r.detail)
                else:
                    self._hold(oid, item.kind, item.setl_id, r.detail)
        return answered, done, clash, failure

    def _hold(self, oid: int, kind: str, setl_id: str, detail: str) -> None:
        if not self.held:
            self._held_since = time.monotonic()
        self.held[oid] = detail
        log.error(
            "the center rejected outbox row %d (%s %s): %s; it stays unsent (reconciliation"
            " with the center shows it) and is offered again in %.0f s",
            oid,
            kind,
            setl_id,
            detail,
            self.retry_held_s,
        )

    def _clash_reason(self, code: str, item: center_pb2.ForwardItem, detail: str) -> str:
        node = self.env.node_id
        return (
            f"the center holds {item.kind} {item.setl_id} with other content ({detail}):"
            f" another front-end issues ids under node {node} of {code}. Forwarding stopped"
            f" and this front-end stops: give each front-end of {code} its own --node-id"
            " (two digits; never copy the <db>.node file with a database) and restart;"
            " its unsent settlements stay in the outbox (medsettle reconcile --center shows them)"
        )
