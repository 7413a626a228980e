"""How the operator commands (`medsettle slip`, `medsettle reconcile`) reach a server: the
SDK's connection options as flags (TLS files, request signing, sealed payloads, the
operator's password), and the exit codes every `medsettle` command answers with.

The password is read from a file (`--password-file`, first line) or from standard input
(`--password-stdin`), or asked for when standard input is a terminal; never taken on the
command line, where other users of the machine would see it in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

import grpc

from clients.sdk import RETRYABLE, MedsettleClient, MedsettleError
from clients.signing import HMAC, SM2, Signer

# Exit codes of the `medsettle` commands.
OK = 0  # done; the books balance
DIFFERS = 1  # done, and what was checked does not hold (books not balanced, chain broken)
USAGE = 2  # bad flags, a missing or unreadable file, a bad setting: nothing was sent
UNREACHABLE = 3  # the server could not be reached or did not answer in time
REFUSED = 4  # the server answered with a refusal (not signed in, not allowed, not found...)

EXIT_CODES = f"""exit codes: {OK} done (books balanced), {DIFFERS} not balanced, {USAGE} usage or
configuration error, {UNREACHABLE} could not connect (UNAVAILABLE, DEADLINE_EXCEEDED),
{REFUSED} refused by the server (any other status)"""


def exit_code(err: MedsettleError) -> int:
    return UNREACHABLE if err.code in RETRYABLE else REFUSED


def add_options(p: argparse.ArgumentParser) -> None:
    """The flags of a command that signs in to a front-end as an operator."""
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the front-end")
    p.add_argument("--institution", required=True, help="fixmedins_code")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password-file", help="a file whose first line is the operator's password")
    pw.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p.add_argument("--tls-ca", help="PEM CA the server's certificate is checked against (TLS)")
    p.add_argument("--tls-cert", help="PEM client certificate, for mutual TLS (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--sign-key", help="file with the institution's signing secret (hex)")
    p.add_argument(
        "--sign-type",
        choices=["sm2", "hmac"],
        default="sm2",
        help="--sign-key is an SM2 secret (SM3withSM2) or an HMAC-SM3 key",
    )
    p.add_argument("--payload-key", help="file with the institution's SM4 payload key (hex)")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds per call")


def _hex_file(path: str, flag: str) -> bytes:
    try:
        return bytes.fromhex(Path(path).read_text().strip())
    except ValueError:
        raise ValueError(f"{flag}: {path} does not hold hex digits") from None


def password(args: argparse.Namespace) -> str:
    if args.password_file:
        lines = Path(args.password_file).read_text("utf-8").splitlines()
        return lines[0] if lines else ""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty():
        return getpass.getpass(f"password of {args.opter} at {args.institution}: ")
    return ""


def credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from `--tls-ca` (and `--tls-cert`/`--tls-key` for mutual TLS); None
    for plaintext."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert, --tls-key: give both or neither")
    if not (args.tls_ca or args.tls_cert):
        return None
    return grpc.ssl_channel_credentials(_pem(args.tls_ca), _pem(args.tls_key), _pem(args.tls_cert))


def _pem(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def client(args: argparse.Namespace) -> MedsettleClient:
    """A client of `--target` as `--opter`, signed in."""
    signer = None
    if args.sign_key:
        kind = SM2 if args.sign_type == "sm2" else HMAC
        signer = Signer(kind, _hex_file(args.sign_key, "--sign-key"))
    payload_key = _hex_file(args.payload_key, "--payload-key") if args.payload_key else None
    c = MedsettleClient(
        args.target,
        fixmedins_code=args.institution,
        opter=args.opter,
        deadline_s=args.deadline,
        credentials=credentials(args),
        signer=signer,
        payload_key=payload_key,
        password=password(args),
    )
    try:
        c.sign_in()
    except BaseException:
        c.close()
        raise
    return c
