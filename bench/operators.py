"""The operator a benchmark or load run calls as: registered with every operator role at
the institution by its security officer (the demo registry's `security01`, who signs in with
the demo database's password), since one run settles, cancels, loads reference data and
checks the books. It gets a fresh password of its own each run. A server whose security
officer cannot be signed in is taken to know the operator already (the load kit's
`--password-file`)."""

from __future__ import annotations

import secrets

import grpc

from medsettle.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    settlement_pb2,
    settlement_pb2_grpc,
)
from server.demo.localserver import LocalServer
from server.security import roles

SECURITY_OFFICER = "security01"


def new_password() -> str:
    return secrets.token_urlsafe(18)


def ensure(
    channel: grpc.Channel, institution: str, opter: str, password: str, officer_password: str
) -> bool:
    """Register `opter` with every operator role and `password`; False when the security
    officer cannot sign in with `officer_password`."""
    st = settlement_pb2_grpc.SettlementStub(channel)
    cat = catalog_pb2_grpc.CatalogStub(channel)

    def header(sign_no: str = "") -> common_pb2.RequestHeader:
        return common_pb2.RequestHeader(
            msgid=f"OP{secrets.token_hex(8)}",
            fixmedins_code=institution,
            opter=SECURITY_OFFICER,
            sign_no=sign_no,
        )

    try:
        signed = st.SignIn(
            settlement_pb2.SignInRequest(header=header(), password=officer_password), timeout=30
        )
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            return False
        raise
    op = catalog_pb2.Operator(
        opter=opter, opter_name=opter, roles=list(roles.OPERATOR_ROLES), password=password
    )
    cat.PutOperators(
        catalog_pb2.PutOperatorsRequest(header=header(signed.sign_no), operators=[op]), timeout=30
    )
    return True


def register(server: LocalServer, institution: str, opter: str) -> str:
    """Register `opter` at the demo `server` with a fresh password; returns the password."""
    password = new_password()
    with grpc.insecure_channel(server.target) as ch:
        if not ensure(ch, institution, opter, password, server.demo_password()):
            raise RuntimeError(f"{SECURITY_OFFICER} of {institution} could not sign in")
    return password
