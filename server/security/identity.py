"""Who is calling, from the TLS handshake: the institution (or center) named in the peer's
certificate, and the rule that a caller with such a certificate may speak only for that
institution (the `fixmedins_code` of every request header it sends).

A caller without a certificate (plaintext, or TLS without client authentication for HIS
callers) is identified by its sign-in alone, as before; a deployment that wants every HIS
to present one sets `require_client_cert`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.errors import PermissionDenied
from server.security import roles
from server.security.certs import CENTER_URI, FRONTEND_URI, INSTITUTION_URI


@dataclass(frozen=True)
class Peer:
    institution: str = ""  # the fixmedins_code its certificate names
    center: str = ""  # or the center it names
    frontend: bool = False  # a front-end machine of `institution`

    @property
    def roles(self) -> frozenset[str]:
        return frozenset({roles.CENTER_SERVICE}) if self.frontend else frozenset()

    def describe(self) -> str:
        if self.center:
            return f"center {self.center}"
        if self.institution:
            kind = "front-end" if self.frontend else "institution"
            return f"the {kind} certificate of {self.institution}"
        return "a caller without a certificate"

    def check_header(self, header: Any, where: str = "header") -> None:
        """PERMISSION_DENIED when a header speaks for another institution than the
        certificate's (a center's certificate speaks for none)."""
        code = getattr(header, "fixmedins_code", "")
        if self.institution and code and code != self.institution:
            raise PermissionDenied(
                f"{where}.fixmedins_code: {code} is not the institution of the client"
                f" certificate ({self.institution})"
            )
        if self.center and code:
            raise PermissionDenied(
                f"{where}.fixmedins_code: a center's certificate ({self.center}) does not"
                " speak for an institution"
            )


ANONYMOUS = Peer()


# What grpc names a peer by once its certificate verified: the subject alternative names,
# or the common name of a certificate without any.
_SAN, _CN = "x509_subject_alternative_name", "x509_common_name"


def peer_of(context: Any) -> Peer:
    """The identity in the peer's verified certificate; ANONYMOUS without one. Read from
    grpc's peer identities (under 1 us a call); the whole `auth_context()` (about 8 us: it
    carries the certificate's PEM) only for a certificate that names nobody medsettle
    knows."""
    identities = context.peer_identities()
    key = context.peer_identity_key() if identities else None
    if key not in (_SAN, _CN):
        return ANONYMOUS
    names = (
        [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in identities]
        if key == _SAN
        else []
    )
    for name in names:
        if name.startswith(FRONTEND_URI):
            code = name[len(FRONTEND_URI) :]
            if INSTITUTION_URI + code in names:
                return Peer(institution=code, frontend=True)
    for name in names:
        if name.startswith(INSTITUTION_URI):
            return Peer(institution=name[len(INSTITUTION_URI) :])
        if name.startswith(CENTER_URI):
            return Peer(center=name[len(CENTER_URI) :])
    auth = context.auth_context()
    if auth.get("transport_security_type") == [b"ssl"] and auth.get(_CN):
        raise PermissionDenied("the client certificate names no medsettle institution")
    return ANONYMOUS
