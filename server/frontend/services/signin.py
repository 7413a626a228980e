"""SignIn (9001): who an operator is, proven by their password, before a sign_no is issued.

The password is checked against the operator's stored scrypt hash on the KDF's threads
(server/security/passwords.py), before the write turn; the write then decides with the
registry as it is in that transaction (server/frontend/operators.py `attempt`). Every refusal
(unknown operator or institution, disabled, locked out, no password set, wrong password)
is one answer, UNAUTHENTICATED "operator or password wrong", after the same work (an
unknown operator's password is checked against a dummy hash): no answer tells whether an
operator exists or is locked. The failure count is committed in a transaction of its own,
which issues nothing; what the refusal really was goes to the audit trail.

A retry with the msgid of a sign-in that succeeded returns its answer (the same sign_no)
only with the right password again: the password is checked before the stored answer is
looked up, and it is left out of the request's digest (which is stored).
"""

from __future__ import annotations

import sqlite3

from medsettle.v1 import settlement_pb2
from server.common import Env, Trail, check_header, idempotent, now_ms, request_hash
from server.errors import Unauthenticated, field_error
from server.frontend import operators, visits
from server.frontend.auditing import FrontendAuditor
from server.frontend.store.sqlite import Store
from server.security.passwords import KDF

SIGN_IN = "/medsettle.v1.Settlement/SignIn"
REFUSED = "operator or password wrong"


def without_password(request: settlement_pb2.SignInRequest) -> settlement_pb2.SignInRequest:
    """The request as its digest sees it: the password cleared."""
    out = settlement_pb2.SignInRequest()
    out.CopyFrom(request)
    out.ClearField("password")
    return out


async def sign_in(
    store: Store, env: Env, auditor: FrontendAuditor, request: settlement_pb2.SignInRequest
) -> bytes:
    header = request.header
    check_header(header, needs_msgid=True, needs_sign=False)
    code, opter = header.fixmedins_code, header.opter
    if len(opter) > operators.OPTER_MAX:
        raise field_error("header.opter", f"longer than {operators.OPTER_MAX}")
    digest = request_hash("SignIn", without_password(request))
    checked = await store.read(lambda conn: operators.password_hash(conn, code, opter))
    matched = await KDF.check(checked, request.password)
    now = now_ms()
    trail = Trail(env.keys.audit, env.pii, SIGN_IN, None, opter, "", show_ref=False)

    def op(conn: sqlite3.Connection) -> bytes | str:
        held, refusal = operators.attempt(
            conn,
            code,
            opter,
            checked,
            matched,
            now,
            env.signin_max_failures,
            env.signin_lockout_s,
        )
        if refusal:  # committed: the failure count; nothing issued
            return refusal
        return idempotent(
            conn,
            code,
            header.msgid,
            "SignIn",
            digest,
            now,
            lambda: visits.sign_in(conn, env, header, held, now),
            None,
            trail,
        )

    answer = await store.write(op)
    if isinstance(answer, str):
        # The trail says what it was; the caller hears the one answer.
        await auditor.refused(
            SIGN_IN, request, Unauthenticated(f"{REFUSED} ({answer})"), write=True
        )
        exc = Unauthenticated(REFUSED)
        exc.audited = True
        raise exc
    return answer
