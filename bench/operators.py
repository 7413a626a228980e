"""The operator a benchmark or load run calls as: registered with every operator role at
the institution by its security officer (the demo registry's `security01`), since one run
settles, cancels, loads reference data and checks the books. A server whose registry has no
such officer is taken to know the operator already (`--opter` of the load kit)."""

from __future__ import annotations

import secrets

import grpc

from clients.pb.medsettle.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    settlement_pb2,
    settlement_pb2_grpc,
)
from server.security import roles

SECURITY_OFFICER = "security01"


def ensure(channel: grpc.Channel, institution: str, opter: str) -> bool:
    """Register `opter` with every operator role; False when there is no officer to ask."""
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
        signed = st.SignIn(settlement_pb2.SignInRequest(header=header()), timeout=30)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.PERMISSION_DENIED:
            return False
        raise
    op = catalog_pb2.Operator(opter=opter, opter_name=opter, roles=list(roles.OPERATOR_ROLES))
    cat.PutOperators(
        catalog_pb2.PutOperatorsRequest(header=header(signed.sign_no), operators=[op]), timeout=30
    )
    return True
