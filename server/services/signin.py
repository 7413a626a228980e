"""SignIn (9001): who an operator is, proven, before a sign_no is issued."""

from __future__ import annotations

import sqlite3

from clients.pb.medsettle.v1 import settlement_pb2
from server.domain import visits
from server.domain.common import Env, Trail, check_header, idempotent, now_ms, request_hash
from server.services.auditing import FrontendAuditor
from server.store.sqlite import Store

SIGN_IN = "/medsettle.v1.Settlement/SignIn"


async def sign_in(
    store: Store, env: Env, auditor: FrontendAuditor, request: settlement_pb2.SignInRequest
) -> bytes:
    header = request.header
    check_header(header, needs_msgid=True, needs_sign=False)
    digest = request_hash("SignIn", request)
    now = now_ms()
    trail = Trail(env.keys.audit, env.pii, SIGN_IN, None, header.opter, "", show_ref=False)

    def op(conn: sqlite3.Connection) -> bytes:
        return idempotent(
            conn,
            header.fixmedins_code,
            header.msgid,
            "SignIn",
            digest,
            now,
            lambda: visits.sign_in(conn, env, header, now),
            None,
            trail,
        )

    return await store.write(op)
