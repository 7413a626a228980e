"""The `medsettle` command line: `serve` runs a server; `demo` runs the scripted HIS visit
against a fresh front-end; `certs`, `keys` and `operators` set up who may call; `audit verify`
checks the audit chain; and the HIS-side commands of clients/cli.py (`slip`, `reconcile`).

Exit codes are clients/connect.py's (0 done, 1 not balanced or broken, 2 usage or
configuration, 3 could not connect, 4 refused by the server); an expected failure (a missing
file or directory, a missing data key, a bad database URL, a port in use) is one line on
standard error, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

from clients import cli as his_commands
from clients import connect


def _serve(args: argparse.Namespace) -> int:
    from server import config

    flags = {
        "role": args.role,
        "mode": args.mode,
        "db": args.db,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "demo": True if args.demo else None,
        "center_target": args.center_target,
        "centers": args.centers,
        "metrics_port": args.metrics_port,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_ca": args.tls_ca,
        "require_client_cert": True if args.require_client_cert else None,
        "signing": args.signing,
        "signing_keys": args.signing_keys,
        "node_id": args.node_id,
        "insecure": True if args.insecure else None,
    }
    try:
        cfg = config.load(args.config, flags)
    except (ValueError, OSError) as exc:
        print(f"medsettle serve: {exc}", file=sys.stderr)
        return 2
    if cfg.metrics_port:
        config.prepare_metrics_dir(cfg)
    from server import app  # after the metrics directory is set: it imports prometheus_client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return app.serve(cfg)


def _certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from server.security import certs

    for path in certs.init(Path(args.dir), args.institution, args.center, args.host or None):
        print(path)
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    """An SM2 key pair for an institution: the secret to `<dir>/<code>.sm2` (hex, mode
    0600, for the HIS), the public half registered in the keys file the server reads."""
    import os
    from pathlib import Path

    import engine_rs
    from server.security.signing import InstitutionKey, load_keys, new_sm2_secret, write_keys

    keys_file = Path(args.keys_file)
    keys = load_keys(keys_file) if keys_file.exists() else {}
    secret = new_sm2_secret()
    public = engine_rs.sm2_public_key(secret)
    out = Path(args.dir) / f"{args.institution}.sm2"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    keys[args.institution] = InstitutionKey(sm2_public_key=public)
    write_keys(keys_file, keys)
    print(f"{out}: the secret key (give it to the institution's HIS; keep it private)")
    print(f"{keys_file}: {args.institution} registered with public key {public.hex()}")
    return 0


def _keys_init(args: argparse.Namespace) -> int:
    """A fresh data key (the master key of server/security/datakeys.py) in a new file."""
    from server.security import datakeys

    out = Path(args.out)
    if out.exists():
        print(f"medsettle keys: {out} exists; a data key is never replaced", file=sys.stderr)
        return connect.USAGE
    if not out.parent.is_dir():
        print(f"medsettle keys: {out.parent}: no such directory", file=sys.stderr)
        return connect.USAGE
    datakeys.create(out)
    print(f"{out}: a new data key (mode 0600); give it to the server as data_key_file")
    print("  (MEDSETTLE_DATA_KEY_FILE, or data_key_file in the [server] table), and back it")
    print("  up apart from the database: without it the data cannot be read")
    return connect.OK


def _new_password(args: argparse.Namespace) -> str | None:
    """The password `operators put` sets (None: keep the operator's), from a file, from
    standard input, or asked twice at a terminal with `--password`."""
    import getpass

    if args.password_file:
        lines = Path(args.password_file).read_text("utf-8").splitlines()
        return lines[0] if lines else ""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if args.password:
        first = getpass.getpass(f"new password of {args.opter}: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("--password: the two entries differ")
        return first
    return None


_NEEDS_PASSWORD = (
    "a new operator needs a password (--password-file, --password-stdin or --password)"
)


def _operators(args: argparse.Namespace) -> int:
    """The operator registry on the front-end's database itself: how the first security
    officer of a new front-end is registered (`put --create`; later ones by `PutOperators`),
    and how a forgotten password is reset by whoever runs the machine."""
    from server.common import now_ms
    from server.frontend import operators
    from server.frontend.store.sqlite import Store, init_db
    from server.security import passwords, roles

    create = args.operators_cmd == "put" and args.create
    if not Path(args.db).is_file() and not create:
        hint = " (put --create makes a new front-end's)" if args.operators_cmd == "put" else ""
        print(f"medsettle operators: {args.db}: no such database{hint}", file=sys.stderr)
        return connect.USAGE
    op = None
    if args.operators_cmd == "put":
        held = roles.parse(args.roles or "", "--roles")
        if not held and not args.disable:
            raise ValueError("--roles is required")
        new = _new_password(args)
        if new is not None and passwords.weakness(new):
            raise ValueError(f"the password: {passwords.weakness(new)}")
        if not new and not args.disable and not Path(args.db).is_file():
            raise ValueError(_NEEDS_PASSWORD)  # before the new database is made
        hashed = passwords.make(new) if new else ""
        op = operators.Operator(args.opter, args.name, held, args.disable, hashed)
    try:  # to migrate a database that holds persons, the steps that seal them need the key
        keys = _existing_keys(args.db)
    except ValueError:
        keys = None
    init_db(args.db, keys)
    store = Store(args.db, readers=1)
    try:
        if op is not None:
            put = op

            def write(conn: sqlite3.Connection) -> None:
                known = operators.exists(conn, args.institution, put.opter)
                if not (known or put.password_hash or put.disabled):
                    raise ValueError(_NEEDS_PASSWORD)
                operators.put(conn, args.institution, [put], now_ms())

            store.write_sync(write)
        for o in store.read_sync(lambda conn: operators.listing(conn, args.institution)):
            state = "disabled" if o.disabled else roles.render(o.roles)
            print(f"{args.institution}\t{o.opter}\t{o.opter_name}\t{state}")
    finally:
        store.close()
    return connect.OK


def _audit_verify(args: argparse.Namespace) -> int:
    """Check the audit chain of a front-end's SQLite file or a center's PostgreSQL; exit 1
    naming the first bad record."""
    from pathlib import Path

    from server import config
    from server.common import now_ms
    from server.security import audit

    center = not Path(args.db).exists() and ("=" in args.db or "://" in args.db)
    if not center and not Path(args.db).is_file():
        print(f"medsettle audit: {args.db}: no such database file", file=sys.stderr)
        return 2
    cfg = config.Config(role=config.Role.CENTER if center else config.Role.FRONTEND, db=args.db)
    cfg.data_key_file = args.key_file or ""
    try:
        keys = cfg.data_keys() if center or args.key_file else _existing_keys(args.db)
    except (ValueError, OSError) as exc:
        print(f"medsettle audit: {exc}", file=sys.stderr)
        return 2
    now = now_ms()
    want = None
    if args.head:
        want_seq, _, want_hash = args.head.partition(":")
        want = (args.chain, int(want_seq))
    if center:
        from server.center.store import pg

        verdict = pg.audit_verify(args.db, keys.audit, now, args.retention_days, want)
    else:
        import sqlite3

        conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
        try:
            verdict = audit.verify_sqlite(conn, keys.audit, now, args.retention_days, want)
        finally:
            conn.close()
    if not verdict.ok:
        print(f"audit: BROKEN after {verdict.records} good records: {verdict.bad}")
        return 1
    for chain, (seq, h) in sorted(verdict.heads.items()):
        print(f"audit: chain {chain!r} head seq {seq} hash {h.hex()}")
    if args.head:
        if verdict.found is None or verdict.found.hex() != want_hash.lower():
            print(f"audit: BROKEN: the head {args.head} recorded earlier is not in the chain")
            return 1
    print(f"audit: {verdict.records} records intact")
    return 0


def _existing_keys(db: str) -> Any:
    """A front-end's keys from the environment or its default file, never made here."""
    import os
    from pathlib import Path

    from server.security import datakeys

    if not os.environ.get(datakeys.ENV) and not Path(db + ".key").exists():
        raise ValueError(f"no data key: {db}.key is missing and {datakeys.ENV} is not set")
    return datakeys.load("", db + ".key")


def _demo(args: argparse.Namespace) -> int:
    from server.demo import visit

    return visit.main(keep_db=args.keep_db, port=args.port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medsettle", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run a server")
    s.add_argument("--role", choices=["frontend", "center"])
    s.add_argument("--mode", choices=["local", "center-side", "center"], help="center: center-side")
    s.add_argument("--db", help="SQLite file (front-end)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT)")
    s.add_argument("--center-target", help="host:port of the center (front-end, center mode)")
    s.add_argument("--centers", help="centers by insured region: 440100=host:port,...")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics here (0: none)")
    s.add_argument("--tls-cert", help="PEM certificate: serve TLS (with --tls-key)")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.add_argument(
        "--tls-ca", help="PEM CA whose certificates peers present (client certs, center)"
    )
    s.add_argument(
        "--require-client-cert", action="store_true", help="mutual TLS: refuse callers without one"
    )
    s.add_argument("--signing", choices=["off", "required"], help="request signatures")
    s.add_argument("--signing-keys", help="TOML file of the institutions' signing keys")
    s.add_argument(
        "--node-id", help="this front-end's two-digit id within its institution (default 01)"
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without mutual TLS (closed test networks only)",
    )
    s.add_argument("--config", help="TOML file with a [server] table (MEDSETTLE_* env overrides)")
    s.add_argument("--demo", action="store_true", help="load the demo data set into an empty db")
    s.set_defaults(fn=_serve)

    ce = sub.add_parser("certs", help="development certificates: a private CA and leaves")
    ce_sub = ce.add_subparsers(dest="certs_cmd", required=True)
    ci = ce_sub.add_parser(
        "init", help="create the CA in --dir (kept when it exists) and issue certificates"
    )
    ci.add_argument("--dir", required=True, help="where ca.pem and the leaves go")
    ci.add_argument(
        "--institution", action="append", default=[], help="fixmedins_code (repeatable)"
    )
    ci.add_argument("--center", action="append", default=[], help="a center's name (repeatable)")
    ci.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP the leaves serve on (default localhost and 127.0.0.1)",
    )
    ci.set_defaults(fn=_certs)

    k = sub.add_parser("keys", help="data keys; request-signing keys of institutions")
    k_sub = k.add_subparsers(dest="keys_cmd", required=True)
    ki = k_sub.add_parser(
        "init",
        help="a new data key file (mode 0600) for a center or a front-end",
        description="Make the master key a server seals personal data and chains its audit"
        " trail with (server/security/datakeys.py). A center needs one before its first start;"
        " a front-end makes <db>.key itself unless given one. Name the file in data_key_file"
        " (MEDSETTLE_DATA_KEY_FILE) and back it up apart from the database.",
    )
    ki.add_argument("--out", required=True, help="the new key file (never overwritten)")
    ki.set_defaults(fn=_keys_init)
    kn = k_sub.add_parser("new", help="an SM2 key pair; its public half registered")
    kn.add_argument("--institution", required=True, help="fixmedins_code")
    kn.add_argument("--dir", required=True, help="where the secret key file goes")
    kn.add_argument("--keys-file", required=True, help="the server's signing_keys TOML file")
    kn.set_defaults(fn=_keys_new)

    o = sub.add_parser("operators", help="a front-end's operator registry, on its database")
    o_sub = o.add_subparsers(dest="operators_cmd", required=True)
    op = o_sub.add_parser("put", help="register or change an operator (ends their sign-ins)")
    ol = o_sub.add_parser("list", help="an institution's operators")
    for q in (op, ol):
        q.add_argument("--db", required=True, help="the front-end's SQLite file (must exist)")
        q.add_argument("--institution", required=True, help="fixmedins_code")
    op.add_argument("--opter", required=True, help="operator id")
    op.add_argument("--name", default="", help="operator name")
    op.add_argument("--roles", help="comma-separated: cashier,supervisor,finance,admin,security")
    op.add_argument("--disable", action="store_true", help="may no longer sign in")
    op.add_argument(
        "--create", action="store_true", help="create the database (a new front-end's first)"
    )
    pw = op.add_mutually_exclusive_group()
    pw.add_argument("--password-file", help="set the password: the first line of this file")
    pw.add_argument("--password-stdin", action="store_true", help="set it from standard input")
    pw.add_argument("--password", action="store_true", help="set it: asked twice at a terminal")
    for q in (op, ol):
        q.set_defaults(fn=_operators)

    a = sub.add_parser("audit", help="the tamper-evident audit trail")
    a_sub = a.add_subparsers(dest="audit_cmd", required=True)
    av = a_sub.add_parser("verify", help="check the chain; name the first bad record")
    av.add_argument("--db", required=True, help="front-end SQLite file, or the center's DSN")
    av.add_argument("--key-file", help="the data key file (default: MEDSETTLE_DATA_KEY, <db>.key)")
    av.add_argument("--retention-days", type=int, default=180)
    av.add_argument("--head", help="SEQ:HASH printed by an earlier verify: must still be there")
    av.add_argument("--chain", default="", help="the chain of --head (center: fixmedins_code)")
    av.set_defaults(fn=_audit_verify)

    d = sub.add_parser("demo", help="scripted HIS visit against a fresh demo front-end")
    d.add_argument("--keep-db", help="keep the SQLite file at this path")
    d.add_argument("--port", type=int, default=0, help="0 = a free port")
    d.set_defaults(fn=_demo)

    his_commands.add_commands(sub)

    args = p.parse_args(argv)  # a usage error exits 2
    import psycopg

    from server.errors import ClientError

    return his_commands.run(args, (sqlite3.Error, psycopg.Error, ClientError))


if __name__ == "__main__":
    sys.exit(main())
