"""Server configuration: defaults, then a TOML file, then `MEDSETTLE_*` environment
variables, then command-line flags (each overriding the one before).

A key in the file's `[server]` table or an environment variable `MEDSETTLE_<KEY>` (upper
case) sets the field of the same name; unknown keys are an error, so a typo never passes
silently.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from server.security import datakeys
from server.security.certs import TlsFiles
from server.security.datakeys import DataKeys
from server.security.pii import CIPHERS

# The most settles one SettleSummaries call to a center may carry (a front-end's
# `center_batch` is at most this; the center refuses a longer call whole).
MAX_SETTLES_PER_CALL = 256


class Role(StrEnum):
    """What a server is: a hospital's front-end (SQLite) or the insurance center
    (PostgreSQL). Each has its assembly (server/frontend/assembly.py,
    server/center/assembly.py)."""

    FRONTEND = "frontend"
    CENTER = "center"


class Mode(StrEnum):
    """How a front-end settles: locally, forwarding afterwards, or at the center (the national
    platform's two modes; docs/architecture.md). `center` is read as `center-side`, the name
    it had."""

    LOCAL = "local"
    CENTER_SIDE = "center-side"

    @classmethod
    def _missing_(cls, value: object) -> Mode | None:
        return cls.CENTER_SIDE if value == "center" else None


@dataclass
class Config:
    role: Role = Role.FRONTEND
    mode: Mode = Mode.LOCAL  # a front-end's; a center ignores it
    db: str = "medsettle.db"  # SQLite path (front-end)
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 1  # processes sharing the port (SO_REUSEPORT)
    # This front-end machine's id within its institution (two digits): with the
    # institution's code it makes the ids this node issues unique across the province; two
    # front-ends of one institution need different node ids.
    node_id: str = "01"
    sign_ttl_s: int = 5 * 24 * 3600  # a sign_no lasts 5 days (the platform's 9001 sign-in)
    tz_offset_min: int = 480  # the local day of reconciliation (UTC+8)
    grace_s: float = 10.0  # SIGTERM: how long in-flight calls may finish
    max_lines_per_call: int = 10_000  # UploadFees / one StreamFees message
    max_lines_per_visit: int = 100_000
    max_message_bytes: int = 16 * 1024 * 1024
    # Hostile input: every call must carry a deadline (grpc-timeout) of at most
    # max_deadline_s; a connection carries at most max_streams_per_connection calls at once
    # (more wait in the client); a client pinging more often than min_ping_interval_s
    # without data is sent away (GOAWAY too_many_pings).
    require_deadline: bool = True
    max_deadline_s: float = 600.0
    max_streams_per_connection: int = 100
    min_ping_interval_s: float = 10.0
    commit_batch_max: int = 256  # group commit: most operations sharing one fsync
    readers: int = 4  # reader threads (queries, pre-settlement)
    demo: bool = False  # seed the demo data set into an empty database
    center_target: str = ""  # host:port of the center (a front-end in center mode)
    center_deadline_s: float = 3.0  # how long a front-end waits for the center
    # A center-mode settle whose answer was lost (the center may have committed it) waits
    # this long for the HIS to retry its msgid, then is cancelled at the center.
    center_retry_grace_s: float = 300.0
    # Centers by insured region, "440100=host:port,440300=host:port": a cross-region
    # patient settles with the center of the region where they are insured; others (and
    # regions not listed) with center_target.
    centers: str = ""
    refdata_pull_s: float = 30.0  # how often a front-end asks the center for new versions
    # The emergency plan (README, "The center and the two settlement modes"): when the center
    # does not answer, settle locally, marked offline and forwarded later, within the limits
    # of the policy in force (its `offline` table) or, when it has none, these; off = answer
    # UNAVAILABLE.
    offline_fallback: bool = False
    offline_max_medfee_fen: int = 500_000
    offline_max_per_day: int = 500
    # Prometheus: `/metrics` on this port (0: none), served once by the parent process for
    # all workers, from prometheus-client's multiprocess files in metrics_dir (default: a
    # directory of this server's under the system's temporary directory, emptied at start).
    metrics_port: int = 0
    metrics_dir: str = ""
    # TLS (PEM files; `medsettle certs init` makes development ones). With tls_cert and
    # tls_key the listener speaks only TLS; tls_ca is the authority whose certificates this
    # node accepts from its peers: client certificates on the listener (required with
    # require_client_cert, as at a center), and the center's on a front-end's link, which
    # then presents tls_cert itself (mutual TLS between front-end and center).
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    require_client_cert: bool = False
    # Request signing (clients/signing.py) of HIS calls to a front-end: "off", or
    # "required" with the institutions' keys registered in the TOML file signing_keys;
    # a call's timestamp must be within signing_window_s of the server's clock.
    signing: str = "off"
    signing_keys: str = ""
    signing_window_s: int = 300
    # Sealed payloads (clients/sealing.py): "off", or "sm4-gcm" with the institutions'
    # 16-byte SM4 keys in the TOML file payload_keys: every call's messages sealed.
    payload_encryption: str = "off"
    payload_keys: str = ""
    # Data at rest (server/security/datakeys.py): the master key's file (or the environment's
    # MEDSETTLE_DATA_KEY); a front-end without either makes `<db>.key`. Audit records are
    # kept audit_retention_days, then pruned from the start of the chain.
    data_key_file: str = ""
    audit_retention_days: int = 180
    # How personal identifiers are sealed at rest: aes-256-gcm, or sm4-gcm where the
    # national cipher is required (values sealed either way open either way).
    pii_cipher: str = "aes-256-gcm"
    # A server listening beyond loopback must have TLS with client authentication
    # (require_client_cert); `insecure` lets it start without, for a closed test network.
    insecure: bool = False
    # Sign-in: after signin_max_failures wrong passwords in a row an operator is locked out
    # for signin_lockout_s (every failure is audited).
    signin_max_failures: int = 5
    signin_lockout_s: int = 900
    # Sanity bounds on money (fen): one fee line, and one visit's total; above them a call
    # is INVALID_ARGUMENT, so no sum of stored amounts can overflow.
    max_line_fee_fen: int = 1_000_000_000  # 10,000,000.00 yuan
    max_visit_fee_fen: int = 10_000_000_000  # 100,000,000.00 yuan
    # Calls one peer address may have in flight at once (RESOURCE_EXHAUSTED beyond).
    max_calls_per_peer: int = 200
    # Audit records of refused calls per second (per worker) before they are only counted.
    max_refusal_audits_per_s: float = 50.0
    # The center's SettleSummary calls settled in one transaction at most (center mode: the
    # calls that arrive while one batch commits form the next); 1 settles each alone.
    center_settle_batch: int = 256
    # A center-mode front-end's settles in one call to its center at most (the settles that
    # arrive while the previous call is out travel together); 1 sends each alone.
    center_batch: int = 64

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field[Any]]:
        return {f.name: f for f in dataclasses.fields(cls)}

    def update(self, values: dict[str, Any], source: str) -> None:
        known = self.fields()
        for key, raw in values.items():
            if key not in known:
                raise ValueError(f"{source}: unknown setting {key!r}")
            setattr(self, key, _coerce(type(getattr(self, key)), raw, f"{source}: {key}"))

    def center_routes(self) -> dict[str, str]:
        return parse_routes(self.centers)

    def validate(self) -> None:
        self.center_routes()  # a malformed table is refused at start
        if (
            self.role is Role.FRONTEND
            and self.mode is Mode.CENTER_SIDE
            and not (self.center_target or self.centers)
        ):
            raise ValueError("center_target: a front-end in center mode needs the center's address")
        if not (len(self.node_id) == 2 and self.node_id.isdigit()):
            raise ValueError(f"node_id: {self.node_id!r} is not two digits")
        if not self.insecure and not is_loopback(self.host):
            if not (self.tls_cert and self.require_client_cert):
                raise ValueError(
                    f"host: {self.host} is beyond loopback without TLS and client"
                    " certificates (tls_cert, tls_key, tls_ca, require_client_cert);"
                    " set insecure (--insecure) only on a closed test network"
                )
        for key in (
            "max_line_fee_fen",
            "max_visit_fee_fen",
            "max_calls_per_peer",
            "center_settle_batch",
            "center_batch",
        ):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be positive")
        if self.center_batch > MAX_SETTLES_PER_CALL:
            raise ValueError(f"center_batch: at most {MAX_SETTLES_PER_CALL} (what a center takes)")
        if self.workers < 1:
            raise ValueError("workers: must be at least 1")
        if self.signing not in ("off", "required"):
            raise ValueError(f"signing: {self.signing!r} is not off or required")
        if self.signing == "required":
            if not self.signing_keys:
                raise ValueError("signing_keys: signing = required needs the keys file")
            from server.security.signing import load_keys

            load_keys(self.signing_keys)  # a bad file is refused at start
        if self.payload_encryption not in ("off", "sm4-gcm"):
            raise ValueError(
                f"payload_encryption: {self.payload_encryption!r} is not off or sm4-gcm"
            )
        if self.payload_encryption == "sm4-gcm":
            if not self.payload_keys:
                raise ValueError("payload_keys: payload_encryption = sm4-gcm needs the keys file")
            from server.security.payload import load_keys as load_payload_keys

            load_payload_keys(self.payload_keys)  # a bad file is refused at start
        if self.pii_cipher not in CIPHERS:
            raise ValueError(f"pii_cipher: {self.pii_cipher!r} is not one of {', '.join(CIPHERS)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert, tls_key: give both or neither")
        if self.role is Role.CENTER and self.tls_cert and not self.require_client_cert:
            raise ValueError(
                "require_client_cert: a center with TLS answers front-ends by their"
                " certificates (mutual TLS); set it"
            )
        if self.require_client_cert and not (self.tls_cert and self.tls_ca):
            raise ValueError("require_client_cert: needs tls_cert, tls_key and tls_ca")
        for key in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ValueError(f"{key}: {path} is not a readable file")

    def data_keys(self) -> DataKeys:
        """The keys of this node's data; a front-end's default key file sits beside its db."""
        default = self.db + ".key" if self.role is Role.FRONTEND else None
        return datakeys.load(self.data_key_file, default)

    def tls(self) -> TlsFiles | None:
        """This node's TLS files, or None for plaintext."""
        if not (self.tls_cert or self.tls_ca):
            return None
        return TlsFiles(self.tls_cert, self.tls_key, self.tls_ca)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) listens on loopback only."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# MEDSETTLE_* variables that are not settings but are read elsewhere: the data key
# (datakeys.ENV), the tests' PostgreSQL and property-test scale, prometheus' directory.
OTHER_VARIABLES = frozenset({"data_key", "test_pg", "property_scale"})


def parse_routes(text: str) -> dict[str, str]:
    routes: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        region, sep, target = part.partition("=")
        if not sep or not region.strip().isdigit() or not target.strip():
            raise ValueError(f"centers: {part!r} is not region=host:port")
        routes[region.strip()] = target.strip()
    return routes


def _coerce(kind: type, raw: Any, where: str) -> Any:
    if isinstance(raw, kind):
        return raw
    if not isinstance(raw, str):
        if kind is float and isinstance(raw, int):
            return float(raw)
        raise ValueError(f"{where}: expected {kind.__name__}, got {raw!r}")
    if issubclass(kind, Enum):
        try:
            return kind(raw)
        except ValueError:
            names = " or ".join(m.value for m in kind)
            raise ValueError(f"{where}: {raw!r} is not {names}") from None
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)  # type: ignore[call-arg]  # int, float or str here
    except ValueError:
        raise ValueError(f"{where}: cannot read {raw!r} as {kind.__name__}") from None


def load(path: str | None, overrides: dict[str, Any]) -> Config:
    """Defaults < file < environment < `overrides` (flags that were given)."""
    cfg = Config()
    if path:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        cfg.update(doc.get("server", {}), path)
    env = {
        k[len("MEDSETTLE_") :].lower(): v
        for k, v in os.environ.items()
        if k.startswith("MEDSETTLE_") and k[len("MEDSETTLE_") :].lower() not in OTHER_VARIABLES
    }
    cfg.update(env, "environment")
    cfg.update({k: v for k, v in overrides.items() if v is not None}, "command line")
    cfg.validate()
    return cfg


def prepare_metrics_dir(cfg: Config) -> str:
    """Empty the multiprocess metrics directory and point prometheus-client at it, before
    anything imports prometheus_client (it reads the variable at import time)."""
    directory = Path(
        cfg.metrics_dir or Path(tempfile.gettempdir()) / f"medsettle-metrics-{os.getpid()}"
    )
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    cfg.metrics_dir = str(directory)
    return str(directory)
