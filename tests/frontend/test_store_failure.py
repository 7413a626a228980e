"""When the store cannot write, and when the server cannot start, on real processes.

A file-size limit (RLIMIT_FSIZE, set on the running server with prlimit: no root, no mount)
makes every write of the front-end fail as a full disk does: a small write fails at its
commit, a large one inside its operation (SQLite spills pages and rolls the transaction
back, which used to wedge the group commit). Each is UNAVAILABLE with nothing written, a
read that must be audited is UNAVAILABLE too, health says NOT_SERVING; once the limit is
lifted the next write succeeds, health says SERVING, and SIGTERM stops the server with 0.

A server that cannot start (its port taken, its database's directory missing, a database URL
it cannot use, a center without its data key) says why in one line and exits non-zero, with
no traceback and no password; a running center's startup line does not print its password.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.conninfo import make_conninfo

from clients.sdk import MedsettleError
from server.demo.localserver import ROOT, LocalServer
from tests.harness import DAY, RETIRED, client, lines, snapshot
from tests.pg import center_server

Health = health_pb2.HealthCheckResponse


def health(server: LocalServer) -> int:
    with grpc.insecure_channel(server.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)  # type: ignore[attr-defined]
        return int(r.status)


def unavailable(send: Callable[[], object]) -> None:
    with pytest.raises(MedsettleError) as err:
        send()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE, err.value.message


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    s = LocalServer(tmp_path / "f.db", log=tmp_path / "f.log").start()  # one process
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_failed_writes_answer_unavailable_and_the_store_recovers(server: LocalServer) -> None:
    c = client(server)

    def register(no: str) -> str:
        p = RETIRED
        return c.register(
            p.psn_no, insutype=p.insutype, med_type=11, begndate=DAY, ipt_otp_no=no
        ).mdtrt_id

    mdtrt_id = register("F0")
    assert server.proc is not None
    pid = server.proc.pid
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    before = snapshot(server.db)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))  # no file may grow, or be written
    try:
        unavailable(lambda: register("F1"))
        stay = lines(20_000, seed=5)  # megabytes of rows: SQLite spills inside the operation
        unavailable(lambda: c.stream_fees(mdtrt_id, stay))
        unavailable(lambda: register("F2"))
        unavailable(lambda: c.get_person("02", RETIRED.psn_cert_no))  # cannot be audited
        assert health(server) == Health.NOT_SERVING
        assert snapshot(server.db) == before
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
    again = register("F3")  # the disk is back
    assert c.stream_fees(again, lines(2_000, seed=6)).line_count == 2_000
    assert health(server) == Health.SERVING
    c.close()
    assert server.stop() == 0  # SIGTERM still stops it, cleanly


# ---------------------------------------------------------------------------- start failures
def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`medsettle serve` with `args`, in an environment without a data key but `env`'s."""
    keyless = {k: v for k, v in os.environ.items() if not k.startswith("MEDSETTLE_DATA_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", *args],
        cwd=ROOT,
        env={**keyless, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_clear_line(r: subprocess.CompletedProcess[str], *says: str) -> str:
    """The server exited non-zero, its last line on stderr says why, and no traceback."""
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("medsettle serve: cannot start: "), out
    for s in says:
        assert s in last, last
    return out


DATA_KEY = {"MEDSETTLE_DATA_KEY": "ab" * 32}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = serve("--db", str(tmp_path / "p.db"), "--port", port, "--workers", workers)
    one_clear_line(r, f"127.0.0.1:{port}")


def test_a_missing_database_directory(tmp_path: Path) -> None:
    r = serve("--db", str(tmp_path / "nowhere" / "f.db"), "--port", "0")
    one_clear_line(r, str(tmp_path / "nowhere"), "does not exist")


def test_a_bad_postgresql_url_and_its_password_is_not_printed() -> None:
    url = "postgresql://medsettle:s3cret-pw@127.0.0.1:1/center"  # nothing listens on port 1
    r = serve("--role", "center", "--db", url, "--port", "0", env=DATA_KEY)
    out = one_clear_line(r)
    assert "s3cret-pw" not in out


def test_a_center_without_its_data_key() -> None:
    r = serve("--role", "center", "--db", "postgresql://postgres@127.0.0.1/x")
    one_clear_line(r, "data_key")


@pytest.mark.pg
def test_the_startup_line_does_not_print_the_database_password(pg_dsn: str, tmp_path: Path) -> None:
    dsn = make_conninfo(pg_dsn, password="s3cret-pw")  # trust auth: accepted, and ignored
    center = center_server(dsn, tmp_path).start()
    assert center.stop() == 0
    log = (tmp_path / "center-1-any.log").read_text()
    assert "listening on" in log
    assert "s3cret-pw" not in log
    assert "password=***" in log
