"""The center's side of store-and-forward: what a front-end in local mode settled and
cancelled, recorded at the center in the front-end's order, each at most once, none of it on
trust.

A forwarded settlement is recorded only when
- its ids are the header's institution and node (`nodes.issued_by`: setl_id and mdtrt_id;
  under mutual TLS the header's institution is the certificate's, server/rpc.py);
- its amounts are sane: none negative or above `max_visit_fee_fen`, the four parts of the
  summary adding up to the total, a settlement time neither before 2000 nor in the future;
- the center knows the person, and the same `fund_split` run at the center (from the
  forwarded summary, the person as the center holds them, the institution, the policy
  version the settlement names, and the accumulators and account balance the front-end
  settled against) gives every fund leg, total, account debit and accumulator change the
  front-end reported.
Otherwise it is REJECTED, `detail` naming what differed, and nothing is written. The center
applies the accumulator change to its own accumulators and stores its own split; when its
accumulators before were not the front-end's (the person settled elsewhere meanwhile), both
views are kept in accumulator_differences (APPLIED_WITH_DIFFERENCE).

An id the center already holds is a DUPLICATE (a replay) when the content is the same, and a
CONFLICT, logged at ERROR, when it is not: another front-end issues ids under this node. No
later item of that batch is applied. A cancel applies only to a settlement of this node,
under a cancel id of this node.

The items are decided in order over the batch's view of the ledger (store/batch.py: read
and locked set-wise first, written set-wise after), so each sees the ones before it. The
decision is the engine's (`engine_rs.ForwardBatch`, engine_rs/src/center/forward.rs: the
checks above, the split again, the rows and their COPY text, with the GIL released); the
Python decision it replaced is the tests' oracle (tests/center/forward_twin.py).
"""

from __future__ import annotations

import logging

import engine_rs
from medsettle.v1 import center_pb2
from server.center import bindings
from server.center.settle import CenterEnv, check_node_header
from server.center.store.batch import LedgerBatch
from server.center.store.pg import Conn
from server.errors import ClientError

log = logging.getLogger("medsettle.center")


async def forward(conn: Conn, env: CenterEnv, req: center_pb2.ForwardRequest, now: int) -> bytes:
    """Record a front-end's settlements and cancels (local mode), in its order, each at most
    once; the answer (a `ForwardResponse`) says per item what the center did."""
    check_node_header(req.header, needs_msgid=False)
    h = req.header
    inst = await env.institution(conn, h.fixmedins_code)
    await bindings.claim(conn, h, now)
    plan = engine_rs.ForwardBatch(req.SerializeToString())
    batch = LedgerBatch(h.fixmedins_code)
    await batch.load(
        conn,
        plan.setl_ids,
        set(plan.settle_ids),
        plan.mdtrt_ids,
        set(plan.psn_nos),
        set(plan.keys),
    )
    policies = {}
    for version in plan.policy_versions:
        try:
            policies[version] = await env.policy(conn, version)
        except ClientError:  # the engine refuses the items that name it
            pass
    decided = plan.decide(
        env.forward_node,
        (inst.fixmedins_code, h.node_id, inst.hosp_lv, inst.admdvs),
        now,
        policies,
        batch.settlements,
        batch.legs,
        batch.active,
        batch.persons,
        batch.accumulators,
    )
    for seq, setl_id, detail in decided.conflicts:
        log.error(
            "CONFLICT: node %s of %s (instance %s) forwarded %s (item %d): %s; another"
            " front-end issues ids under this node",
            h.node_id,
            h.fixmedins_code,
            h.instance_id or "not given",
            setl_id,
            seq,
            detail,
        )
    await LedgerBatch.write(conn, decided)
    return decided.answer
