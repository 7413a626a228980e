"""The HIS-side commands of the `medsettle` command line: `slip` prints a stored settlement;
`reconcile` prints a day's totals for an institution and, with `--center`, compares (and with
`--repair` mends) both sides. They speak to a front-end over gRPC through the SDK only; the
server's own commands (`serve`, `demo`, `certs`, `keys`, `operators`, `audit`) are in
server/cli.py, which mounts these beside them.

Every command exits with one of the codes in clients/connect.py (0 done, 1 not balanced or
broken, 2 usage or configuration, 3 could not connect, 4 refused by the server); an expected
failure (a missing file or directory, a port in use) is one line on standard error, never a
traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from clients import connect
from clients.sdk import MedsettleError
from clients.slip import render


def _slip(args: argparse.Namespace) -> int:
    with connect.client(args) as c:
        print(render(c.get_settlement(args.setl_id).setlinfo))
    return connect.OK


def _reconcile(args: argparse.Namespace) -> int:
    from clients import reconcile

    center_credentials = connect.credentials(args)  # the front-end machine's certificate
    with connect.client(args) as c:
        day = args.date or reconcile.today()
        return reconcile.run(c, args.center, day, center_credentials, fix=args.repair)


def add_commands(sub: Any) -> None:
    """Adds `slip` and `reconcile` to a parser's subcommands."""
    for name, fn, helptext in (
        ("slip", _slip, "print a stored settlement's slip"),
        ("reconcile", _reconcile, "a day's books (3201/3202); --center compares both sides"),
    ):
        c = sub.add_parser(
            name,
            help=helptext,
            description=helptext,
            epilog=connect.EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        connect.add_options(c)
        c.add_argument(
            "--opter",
            required=True,
            help="a registered operator: cashier or finance for slip, finance for reconcile",
        )
        if name == "slip":
            c.add_argument("setl_id")
        else:
            c.add_argument("--date", type=int, help="yyyymmdd, default today (UTC+8)")
            c.add_argument(
                "--center",
                help="host:port of the center: compare both sides (over mutual TLS, give the"
                " front-end machine's certificate as --tls-cert/--tls-key)",
            )
            c.add_argument(
                "--repair",
                action="store_true",
                help="with --center: carry out the proposed repairs (cancel at the center a"
                " settlement held there only; cancel here one the center cancelled; the"
                " operator needs the supervisor role), then compare again",
            )
        c.set_defaults(fn=fn)


def run(args: argparse.Namespace, expected: tuple[type[BaseException], ...] = ()) -> int:
    """Runs the parsed command; a refusal or an `expected` failure is one line on standard
    error and its exit code."""
    try:
        return int(args.fn(args))
    except MedsettleError as exc:
        print(f"medsettle {args.cmd}: {exc}", file=sys.stderr)
        for field, reason in exc.violations:
            print(f"  {field}: {reason}", file=sys.stderr)
        return connect.exit_code(exc)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"medsettle {args.cmd}: {one_line(exc)}", file=sys.stderr)
        return connect.USAGE
    except expected as exc:
        print(f"medsettle {args.cmd}: {one_line(exc)}", file=sys.stderr)
        return connect.USAGE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medsettle", description=__doc__)
    add_commands(p.add_subparsers(dest="cmd", required=True))
    return run(p.parse_args(argv))  # a usage error exits 2


def one_line(exc: BaseException) -> str:
    """An expected failure as one line: a file's name and what is wrong with it, or the
    first line of the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
