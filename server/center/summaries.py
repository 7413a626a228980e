"""Center mode's `SettleSummary` calls settled together (issue 15): the calls that arrive
while a batch commits form the next batch, one transaction, read and written set-wise.

One call alone costs about seventeen statements one after another (the node binding, the
msgid, the ids, the person, the accumulator lock, the writes, the audit chain). A batch
reads what its calls may touch in one pipelined round trip (the bindings, their msgids,
setl_ids and visits, the persons and the accumulator rows of their years, locked in key
order like a forwarded batch, then the heads of their institutions' audit chains, locked),
answers what those reads alone decide (a node bound to another machine, a replay, a
setl_id or visit the center holds, an institution or policy version it lacks), has the
engine settle the rest in order (`CenterNode.settle_summaries`,
engine_rs/src/center/summary.rs: two calls for one person see each other's accumulators
and balance; the split, the answers, their seals and the rows, with the GIL released),
and writes everything in a second round trip.

What each call is told is what it would have been told alone (server/center/settle.py
`settle_summary`, whose checks and texts these are): a refused call writes nothing and its
refusal goes back to it alone. A batch that fails as a whole (a visit or msgid taken
meanwhile by another worker's transaction, a lost connection) is not guessed at: each of
its calls runs again alone, on the one-call path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import engine_rs
from medsettle.v1 import center_pb2, common_pb2
from server import metrics
from server.center import bindings
from server.center.settle import (
    IDEMPOTENCY_COLUMNS,
    LEG_COLUMNS,
    SETTLEMENT_COLUMNS,
    CenterEnv,
)
from server.center.store.batch import ACC_INSERT, ACC_UPDATE, probe, require_made
from server.center.store.pg import (
    AUDIT_INSERT_ALL,
    Conn,
    PgStore,
    audit_heads_of,
    audit_rows,
    insert_all,
    queue_audit_heads,
)
from server.errors import AlreadyExists, ClientError, FailedPrecondition, refusal
from server.persons import ACC_FIELDS, READ_COLUMNS
from server.refdata import Institution
from server.security import audit

log = logging.getLogger("medsettle.center")
METHOD = "SettleSummary"

Answer = tuple[bytes, bool]  # the answer, and whether it is a stored one replayed


@dataclass
class Call:
    req: center_pb2.CenterSettleRequest
    digest: bytes
    now: int
    done: asyncio.Future[Answer]


@dataclass
class _Batch:
    """What a batch's calls were answered before the engine settles the rest."""

    env: CenterEnv
    answers: dict[int, Answer | ClientError] = field(default_factory=dict)  # by call index
    unknown: dict[int, ClientError] = field(default_factory=dict)  # institution, policy
    audited: list[tuple[str, Call, bool]] = field(default_factory=list)  # chain, call, replay


class SummaryGroup:
    """Takes `SettleSummary` calls and settles them in batches, one batch at a time per
    process; `alone` is the one-call path (a transaction of its own) for a failed batch."""

    def __init__(
        self,
        store: PgStore,
        env: CenterEnv,
        audit_key: bytes,
        alone: Callable[[Call], Coroutine[Any, Any, Answer]],
        record: Callable[[Call, bool], audit.Record],
        max_batch: int = 256,
    ) -> None:
        self.store = store
        self.env = env
        self.audit_key = audit_key
        self.alone = alone
        self.record = record
        self.max_batch = max_batch  # calls a batch takes; the rest wait for the next
        self.pending: list[Call] = []
        self.running: asyncio.Task[None] | None = None

    def submit(
        self, req: center_pb2.CenterSettleRequest, digest: bytes, now: int
    ) -> Awaitable[Answer]:
        """The call queued for the next batch (the batches run while calls wait): its
        answer, to await. Calls submitted before the caller awaits share a batch."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Answer] = loop.create_future()
        if self.max_batch == 1:
            return loop.create_task(self.alone(Call(req, digest, now, done)))
        self.pending.append(Call(req, digest, now, done))
        if self.running is None:
            self.running = loop.create_task(self._run())
        return done

    async def _run(self) -> None:
        try:
            while self.pending:
                calls, held = _take(self.pending, self.max_batch)
                self.pending = held + self.pending[len(calls) + len(held) :]
                await self._settle(calls)
        finally:
            self.running = None

    async def _settle(self, calls: list[Call]) -> None:
        metrics.CENTER_SETTLE_BATCH.observe(len(calls))
        try:
            answers = await self.store.transaction(lambda conn: self._batch(conn, calls))
        except Exception as exc:  # the batch as a whole: each call alone says what it is
            metrics.CENTER_SETTLE_FALLBACKS.inc()
            log.warning(
                "a batch of %d SettleSummary calls failed (%r); each runs alone", len(calls), exc
            )
            await asyncio.gather(*(self._alone(c) for c in calls))
            return
        for i, call in enumerate(calls):
            a = answers[i]
            if not call.done.done():
                if isinstance(a, ClientError):
                    call.done.set_exception(a)
                else:
                    call.done.set_result(a)

    async def _alone(self, call: Call) -> None:
        try:
            result = await self.alone(call)
        except BaseException as exc:  # the call's own outcome, whatever it is
            if not call.done.done():
                call.done.set_exception(exc)
            return
        if not call.done.done():
            call.done.set_result(result)

    async def _batch(self, conn: Conn, calls: list[Call]) -> dict[int, Answer | ClientError]:
        """The batch's transaction (run again whole on a serialization failure)."""
        b = _Batch(self.env)
        reads = await _read(conn, calls)
        _claimed(b, calls, reads)
        await _replays(conn, b, calls, reads)
        _taken(b, calls, reads)
        insts, policies = await _reference(conn, b, calls)
        decided = _settle(b, calls, insts, policies, reads)
        by_chain: dict[str, list[audit.Record]] = {}
        for chain, call, replayed in b.audited:
            by_chain.setdefault(chain, []).append(self.record(call, replayed))
        trail = [
            row
            for chain, records in sorted(by_chain.items())
            for row in audit_rows(self.audit_key, chain, reads.heads[chain], records)
        ]
        await _write(conn, decided, trail)
        return b.answers


def _take(pending: list[Call], most: int) -> tuple[list[Call], list[Call]]:
    """The next batch: up to `most` calls, none with a msgid another one in it has (a
    retry arriving with its first try waits for the next batch, to be its replay)."""
    calls: list[Call] = []
    held: list[Call] = []
    seen: set[tuple[str, str]] = set()
    for call in pending:
        if len(calls) + len(held) >= most:
            break
        key = (call.req.header.fixmedins_code, call.req.header.msgid)
        (held if key in seen else calls).append(call)
        seen.add(key)
    return calls, held


@dataclass
class _Reads:
    """What a batch reads first, in one round trip (`_read`)."""

    bound: dict[tuple[str, str], tuple[str, int]]  # (code, node) -> its machine, since
    stored: dict[tuple[str, str], tuple[Any, ...]]  # (code, msgid) -> method, hash, answer
    taken: dict[str, str]  # setl_id -> the msgid that settled it
    active: dict[tuple[str, str], str]  # (code, mdtrt_id) -> its settled setl_id
    persons: list[tuple[Any, ...]]  # READ_COLUMNS, locked
    accumulators: list[tuple[Any, ...]]  # psn_no, year, pool, opening, ACC_FIELDS; locked
    heads: dict[str, tuple[int, bytes]]  # the audit chains of the calls' institutions, locked


_IDEMPOTENCY = (
    "SELECT r.* FROM unnest(%s::text[], %s::text[]) AS u(c, m) CROSS JOIN LATERAL"
    " (SELECT fixmedins_code, msgid, method, req_hash, response FROM idempotency"
    " WHERE fixmedins_code = u.c AND msgid = u.m OFFSET 0) r"
)
_ACTIVE = (
    "SELECT r.* FROM unnest(%s::text[], %s::text[]) AS u(c, m) CROSS JOIN LATERAL"
    " (SELECT fixmedins_code, mdtrt_id, setl_id FROM settlements WHERE fixmedins_code = u.c"
    " AND mdtrt_id = u.m AND state = 1 OFFSET 0) r"
)
# Every pool of each person's year: the rule (hence the pool) is chosen after the read.
_ACCUMULATORS = (
    "SELECT r.* FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS u(k, y, n)"
    f" CROSS JOIN LATERAL (SELECT psn_no, year, pool, opening, {', '.join(ACC_FIELDS)}"
    " FROM accumulators WHERE psn_no = u.k AND year = u.y ORDER BY pool, opening"
    " OFFSET 0 FOR UPDATE) r ORDER BY u.n, r.pool, r.opening"
)


async def _read(conn: Conn, calls: list[Call]) -> _Reads:
    """Bind the nodes and read what the calls may touch, in one round trip: their msgids,
    setl_ids and visits, and, locked in key order (as a forwarded batch locks them), their
    persons and the accumulator rows of the persons' years; then the heads of their
    institutions' audit chains, locked (a chain whose calls are all refused is locked for
    nothing: a batch's institutions are few, and it saves a round trip)."""
    heads: dict[tuple[str, str, str], int] = {}
    for call in calls:
        h = call.req.header
        if h.instance_id and h.fixmedins_code:
            heads.setdefault((h.fixmedins_code, h.node_id, h.instance_id), call.now)
    nodes = sorted({(code, node) for code, node, _ in heads})
    codes = [c.req.header.fixmedins_code for c in calls]
    years = sorted({(c.req.psn_no, c.req.begndate // 10000) for c in calls})
    async with conn.pipeline():
        for (code, node, instance), now in heads.items():
            await conn.execute(bindings.BIND, (code, node, instance, now))
        bound = [await conn.execute(bindings.BOUND, key) for key in nodes]
        stored = await conn.execute(_IDEMPOTENCY, (codes, [c.req.header.msgid for c in calls]))
        taken = await conn.execute(
            probe("setl_id, msgid FROM settlements", "setl_id"),
            (sorted({c.req.setl_id for c in calls}),),
        )
        active = await conn.execute(_ACTIVE, (codes, [c.req.mdtrt_id for c in calls]))
        persons = await conn.execute(
            probe(f"{READ_COLUMNS} FROM persons", "psn_no", lock=True),
            (sorted({c.req.psn_no for c in calls}),),
        )
        accumulators = await conn.execute(
            _ACCUMULATORS, ([y[0] for y in years], [y[1] for y in years])
        )
        chains = await queue_audit_heads(conn, codes)
    bound_rows = {}
    for key, cur in zip(nodes, bound, strict=True):
        row = await cur.fetchone()
        if row is not None:
            bound_rows[key] = (row[0], row[1])
    return _Reads(
        bound_rows,
        {(r[0], r[1]): r[2:] for r in await stored.fetchall()},
        {r[0]: r[1] for r in await taken.fetchall()},
        {(r[0], r[1]): r[2] for r in await active.fetchall()},
        await persons.fetchall(),
        await accumulators.fetchall(),
        await audit_heads_of(chains),
    )


def _claimed(b: _Batch, calls: list[Call], reads: _Reads) -> None:
    """A call whose node is bound to another front-end machine is refused."""
    for i, call in enumerate(calls):
        h = call.req.header
        if h.instance_id and h.fixmedins_code:
            refusal = bindings.clash(h, reads.bound.get((h.fixmedins_code, h.node_id)))
            if refusal is not None:
                b.answers[i] = refusal


def _open(b: _Batch, calls: list[Call]) -> list[int]:
    """The calls not answered yet."""
    return [i for i in range(len(calls)) if i not in b.answers]


async def _replays(conn: Conn, b: _Batch, calls: list[Call], reads: _Reads) -> None:
    """Calls whose msgid the center has answered: replayed, or refused when the request
    differs or the settlement was cancelled since."""
    stored = reads.stored
    replayed = [
        i
        for i in _open(b, calls)
        if (calls[i].req.header.fixmedins_code, calls[i].req.header.msgid) in stored
    ]
    if not replayed:
        return
    cur = await conn.execute(
        probe("setl_id, state, cancel_id FROM settlements", "setl_id"),
        ([calls[i].req.setl_id for i in replayed],),
    )
    states = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
    for i in replayed:
        req, h = calls[i].req, calls[i].req.header
        method, req_hash, response = stored[(h.fixmedins_code, h.msgid)]
        if method != METHOD or bytes(req_hash) != calls[i].digest:
            b.answers[i] = AlreadyExists(
                f"header.msgid: {h.msgid} was already used for a different request ({method})"
            )
            continue
        state = states.get(req.setl_id)
        if state is not None and state[0] != common_pb2.SETTLED:
            b.answers[i] = FailedPrecondition(
                f"setl_id: {req.setl_id} was cancelled since ({state[1]}); settle again with a"
                " new msgid"
            )
            continue
        answer = b.env.pii.open_answer(h.fixmedins_code, h.msgid, bytes(response))
        b.answers[i] = (answer, True)
        b.audited.append((h.fixmedins_code, calls[i], True))


def _taken(b: _Batch, calls: list[Call], reads: _Reads) -> None:
    """Calls whose setl_id the center holds already, or whose visit is settled."""
    taken, active = reads.taken, reads.active
    open_ = _open(b, calls)
    for i in open_:
        req = calls[i].req
        if req.setl_id in taken:
            b.answers[i] = AlreadyExists(
                f"setl_id: {req.setl_id} was already settled by {taken[req.setl_id]}"
            )
        elif (req.header.fixmedins_code, req.mdtrt_id) in active:
            setl = active[(req.header.fixmedins_code, req.mdtrt_id)]
            b.answers[i] = FailedPrecondition(
                f"mdtrt_id: {req.mdtrt_id} is already settled as {setl}"
            )


async def _reference(
    conn: Conn, b: _Batch, calls: list[Call]
) -> tuple[dict[str, Institution], dict[int, engine_rs.Policy]]:
    """The institutions and policy versions the open calls name (a missing one refuses)."""
    insts: dict[str, Institution] = {}
    policies: dict[int, engine_rs.Policy] = {}
    for i in _open(b, calls):
        try:
            code, version = calls[i].req.header.fixmedins_code, calls[i].req.policy_version
            insts[code] = insts.get(code) or await b.env.institution(conn, code)
            policies[version] = policies.get(version) or await b.env.policy(conn, version)
        except ClientError as exc:
            b.unknown[i] = exc
    return insts, policies


def _settle(
    b: _Batch,
    calls: list[Call],
    insts: dict[str, Institution],
    policies: dict[int, engine_rs.Policy],
    reads: _Reads,
) -> engine_rs.SummaryDecision:
    """The calls not answered yet, settled in order by the engine over the persons and
    accumulator rows read (`settle_summary`'s steps and refusals); a call whose
    institution or policy version the center lacks keeps that refusal, unless an earlier
    call of the batch took its setl_id or visit (as alone, those are checked first)."""
    asked = [(i, calls[i]) for i in _open(b, calls)]
    decided = b.env.forward_node.settle_summaries(
        [(c.req.SerializeToString(), c.digest, c.now, i in b.unknown) for i, c in asked],
        {code: (inst.hosp_lv, inst.admdvs) for code, inst in insts.items()},
        policies,
        reads.persons,
        reads.accumulators,
    )
    for (i, call), outcome in zip(asked, decided.outcomes, strict=True):
        if outcome is None:
            b.answers[i] = b.unknown[i]
        elif isinstance(outcome, bytes):
            b.answers[i] = (outcome, False)
            b.audited.append((call.req.header.fixmedins_code, call, False))
        else:
            b.answers[i] = refusal(outcome)
    return decided


_ALL_SETTLEMENTS = insert_all("settlements", SETTLEMENT_COLUMNS)
_ALL_LEGS = insert_all("setl_legs", LEG_COLUMNS)
_ALL_REMEMBERED = insert_all("idempotency", IDEMPOTENCY_COLUMNS)


async def _write(
    conn: Conn, decided: engine_rs.SummaryDecision, trail: list[tuple[Any, ...]]
) -> None:
    """Everything the batch writes, in one round trip: settlements, legs, idempotency and
    audit records (the engine's rows as `insert_all` takes them), accumulators and
    balances."""
    old, new = decided.accumulators
    moved = decided.moved
    made = None
    async with conn.pipeline():
        if decided.settled:
            await conn.execute(_ALL_SETTLEMENTS.sql, (decided.settlements,))
            await conn.execute(_ALL_LEGS.sql, (decided.legs,))
            await conn.execute(_ALL_REMEMBERED.sql, (decided.remembered,))
        if trail:
            await conn.execute(AUDIT_INSERT_ALL.sql, AUDIT_INSERT_ALL.param(trail))
        if old[0]:
            await conn.execute(ACC_UPDATE, old)
        if new[0]:
            made = await conn.execute(ACC_INSERT, new)
        if moved[0]:
            await conn.execute(
                "UPDATE persons p SET balc = p.balc + u.change"
                " FROM unnest(%s::text[], %s::bigint[]) AS u(psn_no, change)"
                " WHERE p.psn_no = u.psn_no",
                moved,
            )
    if made is not None:
        require_made(len(await made.fetchall()), new)
