"""pytest plugin (loaded by `-p tests.pg` in pyproject) for tests that need PostgreSQL.

`pg_dsn` (per test) and `pg_module_dsn` (per module) create a fresh database named
`medsettle_test_<random>` on the server at `MEDSETTLE_TEST_PG`, yield its DSN and drop it
afterwards. With no server there the tests are skipped, and since a skip is easy to miss in
a long run, the end of the session prints a banner saying so.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from server.demo.localserver import LocalServer

ADMIN_DSN = os.environ.get("MEDSETTLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SKIP_PREFIX = "PostgreSQL unreachable"

_unreachable: str | None = None  # why the server could not be reached, once known
_checked = False


def _where(dsn: str) -> str:
    """host:port/db of a DSN, without credentials, for messages."""
    d = conninfo_to_dict(dsn)
    return f"{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


def _require_server() -> None:
    global _unreachable, _checked
    if not _checked:
        _checked = True
        try:
            psycopg.connect(ADMIN_DSN, connect_timeout=3).close()
        except psycopg.Error as exc:
            _unreachable = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    if _unreachable is not None:
        pytest.skip(f"{SKIP_PREFIX} at {_where(ADMIN_DSN)}: {_unreachable}")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database for the duration of the block; yields its DSN."""
    _require_server()
    name = f"medsettle_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(ADMIN_DSN, dbname=name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            # FORCE: a test that failed may have left a connection open.
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """DSN of a fresh database for one test."""
    with fresh_database() as dsn:
        yield dsn


def center_server(dsn: str, tmp: Path, workers: int = 1, port: int = 0) -> LocalServer:
    """A center (`--role center`) over the database `dsn`, not started."""
    return LocalServer(
        dsn,
        port=port,
        workers=workers,
        extra=["--role", "center"],
        log=tmp / f"center-{workers}-{port or 'any'}.log",
    )


@pytest.fixture
def center(pg_dsn: str, tmp_path: Path) -> Iterator[LocalServer]:
    """A running center over a fresh database (the demo persons and policy are seeded)."""
    server = center_server(pg_dsn, tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_module_dsn() -> Iterator[str]:
    """DSN of a fresh database shared by one module's tests."""
    with fresh_database() as dsn:
        yield dsn


# The outermost wrapper, so the banner comes after the short test summary, just above the
# final counts, where a reader of a long run looks.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None]:
    yield
    skipped = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if isinstance(r.longrepr, tuple) and SKIP_PREFIX in str(r.longrepr[2])
    ]
    if skipped:
        tr = terminalreporter
        tr.write_sep(
            "!", f"PostgreSQL tests SKIPPED: no server at {_where(ADMIN_DSN)}", red=True, bold=True
        )
        tr.write_line(
            f"{len(skipped)} tests needing PostgreSQL did not run: {_unreachable}", red=True
        )
        tr.write_line("Start it (see .ci/run) or point MEDSETTLE_TEST_PG at one.", red=True)
        tr.write_sep("!", red=True, bold=True)
