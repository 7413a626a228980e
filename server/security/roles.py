"""Least privilege: the roles there are, the role each RPC requires, and the check.

An operator (经办人) holds roles in the institution's operator registry; SignIn binds them to
the sign_no it issues, so a call's role comes with its credential, and a change in the
registry signs the operator out (the new roles apply from the next SignIn). A front-end
machine holds the center-service role through its certificate
(`urn:medsettle:frontend:<code>`), the only caller the center's services answer.

The separation follows the level-3 protection rules' split of duties: who takes money
(cashier) is not who undoes it (supervisor), reconciles it (finance) or changes the rules it
is computed by (catalog and policy administrator), and none of them manages operators
(security officer).
"""

from __future__ import annotations

from collections.abc import Iterable

from server.errors import InvalidArgument, PermissionDenied

CASHIER = "cashier"  # 收费员: register, fees, settle
SUPERVISOR = "supervisor"  # 主管: cancel, reverse
FINANCE = "finance"  # 财务: reconciliation, queries
ADMIN = "admin"  # 目录与政策管理员: catalog, mappings, policy, reference data
SECURITY = "security"  # 安全管理员: the operator registry
CENTER_SERVICE = "center_service"  # a front-end machine calling the center

OPERATOR_ROLES = (CASHIER, SUPERVISOR, FINANCE, ADMIN, SECURITY)
ALL_ROLES = (*OPERATOR_ROLES, CENTER_SERVICE)

# Calls anyone may make: the health probe, and SignIn (which checks the registry itself).
PUBLIC: frozenset[str] = frozenset()
ANY_OPERATOR = frozenset(OPERATOR_ROLES)


def _rules(service: str, table: dict[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    return {f"/medsettle.v1.{service}/{m}": frozenset(r) for m, r in table.items()}


# A front-end: every call but Ping and SignIn needs a signed-in operator holding one of these.
FRONTEND_RULES: dict[str, frozenset[str]] = {
    **_rules(
        "Settlement",
        {
            "SignIn": PUBLIC,
            "Ping": PUBLIC,
            "SignOut": ANY_OPERATOR,
            "GetPerson": {CASHIER},
            "Register": {CASHIER},
            "CancelRegistration": {CASHIER},
            "UploadFees": {CASHIER},
            "StreamFees": {CASHIER},
            "DeleteFees": {CASHIER},
            "PreSettle": {CASHIER},
            "Settle": {CASHIER},
            "CancelSettlement": {SUPERVISOR},
            "Reverse": {SUPERVISOR},
            # the cashier reprints a slip; the supervisor looks before cancelling
            "GetSettlement": {CASHIER, SUPERVISOR, FINANCE},
            "QuerySettlements": {SUPERVISOR, FINANCE},
        },
    ),
    **_rules(
        "Reconciliation",
        # finance reads the books; a repair cancels at the center, as a supervisor cancels
        {"Totals": {FINANCE}, "Details": {FINANCE}, "Repair": {SUPERVISOR}},
    ),
    **_rules(
        "Catalog",
        {
            "ImportCatalog": {ADMIN},
            "DownloadCatalog": {ADMIN},
            "PutMappings": {ADMIN},
            "MatchItems": {ADMIN},
            "PutPolicy": {ADMIN},
            "GetPolicy": {ADMIN, FINANCE},
            "PutInstitutions": {ADMIN},
            "PutPersons": {ADMIN},
            "PutOperators": {SECURITY},
        },
    ),
}

# Methods of a service both roles serve that only a front-end implements (the center
# answers them UNIMPLEMENTED): a repair cancels at the front-end's center.
FRONTEND_ONLY = frozenset({"/medsettle.v1.Reconciliation/Repair"})

# The center: its services answer front-end machines only.
CENTER_RULES: dict[str, frozenset[str]] = {
    **_rules(
        "Center",
        {
            m: {CENTER_SERVICE}
            for m in (
                "SettleSummary",
                "SettleSummaries",
                "CancelSettlement",
                "Forward",
                "CatalogSince",
                "PolicySince",
            )
        },
    ),
    **_rules("Reconciliation", {"Totals": {CENTER_SERVICE}, "Details": {CENTER_SERVICE}}),
}


def unknown(names: Iterable[str]) -> str:
    """Why `names` are not all operator roles; "" when they are."""
    bad = sorted(set(names) - set(OPERATOR_ROLES))
    if not bad:
        return ""
    return f"unknown role {', '.join(bad)} (roles: {', '.join(OPERATOR_ROLES)})"


def parse(text: str, where: str = "roles") -> frozenset[str]:
    """Operator roles from their stored or typed form, `cashier,supervisor`."""
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    reason = unknown(roles)
    if reason:
        raise InvalidArgument(f"{where}: {reason}", [(where, reason)])
    return roles


def render(roles: Iterable[str]) -> str:
    """The stored form: known order, comma-separated."""
    have = set(roles)
    return ",".join(r for r in ALL_ROLES if r in have)


def require(method: str, rules: dict[str, frozenset[str]], held: frozenset[str], who: str) -> None:
    """PERMISSION_DENIED unless `held` meets the rule of `method` (an RPC without a rule is
    refused: a new RPC must be given one)."""
    need = rules.get(method)
    if need is None:
        raise PermissionDenied(f"{method}: no role may call it on this server")
    if need and not (need & held):
        raise PermissionDenied(
            f"{method} needs the role {' or '.join(sorted(need))}; {who} holds"
            f" {', '.join(sorted(held)) or 'none'}"
        )
