"""Files at rest are the owner's alone: a fresh front-end's database, its -wal and -shm (which
SQLite creates with the database's mode), the write turn's .lock and the data key are 0600
whatever the umask; files an earlier version left readable by others are narrowed when the
server starts."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from server.demo.localserver import LocalServer
from tests.harness import client

FILES = ("", "-wal", "-shm", ".lock", ".key")


def modes(db: Path) -> dict[str, str]:
    return {s: oct(stat.S_IMODE(os.stat(f"{db}{s}").st_mode)) for s in FILES}


def test_a_fresh_frontends_files_are_0600(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    old = os.umask(0o022)  # the server inherits it: what SQLite would create 0644 under
    try:
        server = LocalServer(db, log=tmp_path / "s.log").start()
    finally:
        os.umask(old)
    try:
        client(server).close()  # a sign-in writes: the write turn's lock is taken
        assert modes(db) == dict.fromkeys(FILES, "0o600")
    finally:
        server.stop()


def test_files_left_readable_are_narrowed_at_start(tmp_path: Path) -> None:
    db = tmp_path / "earlier.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE scratch (k INTEGER)")  # the -wal and -shm exist while open
    for suffix in ("", "-wal", "-shm"):
        os.chmod(f"{db}{suffix}", 0o644)
    with LocalServer(db, log=tmp_path / "s.log"):
        conn.close()
        assert modes(db) == dict.fromkeys(FILES, "0o600")
