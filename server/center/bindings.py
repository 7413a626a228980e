"""The center's half of node identity (server/nodes.py): the `nodes` table binds an
(institution, node id) to the first front-end machine (instance id) that speaks for it, and
every later call from another machine for that node is refused with `CLASH`."""

from __future__ import annotations

import time

from medsettle.v1 import center_pb2
from server.center.store.pg import Conn
from server.errors import FailedPrecondition
from server.nodes import CLASH

BIND = "INSERT INTO nodes VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
BOUND = "SELECT instance_id, claimed_at FROM nodes WHERE fixmedins_code = %s AND node_id = %s"


async def claim(conn: Conn, h: center_pb2.NodeHeader, now: int, *, bind: bool = True) -> None:
    """Hold the caller to the node's instance: bind (institution, node) to `h.instance_id`
    if nothing is bound yet (`bind`, in the caller's transaction), and refuse another
    instance. A header without an instance id (an older front-end, a tool) is not checked."""
    if not (h.instance_id and h.fixmedins_code):
        return
    key = (h.fixmedins_code, h.node_id)
    if bind:
        await conn.execute(BIND, (*key, h.instance_id, now))
    row = await (await conn.execute(BOUND, key)).fetchone()
    refused = clash(h, row)
    if refused is not None:
        raise refused


def clash(h: center_pb2.NodeHeader, row: tuple[str, int] | None) -> FailedPrecondition | None:
    """The refusal of a caller whose node is bound (`row`: the `BOUND` row) to another
    machine; None when it is its own (or nothing is bound)."""
    if row is None or row[0] == h.instance_id:
        return None
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(row[1] / 1000))
    return FailedPrecondition(
        f"{CLASH}: node {h.node_id} of {h.fixmedins_code} belongs to another front-end"
        f" machine (instance {row[0][:8]}..., since {since}), not to this one (instance"
        f" {h.instance_id[:8]}...): give this front-end its own --node-id (two digits,"
        " unique within the institution) and restart it"
    )
