"""The center under stress: two front-ends in center mode settling one person at once keep
the policy's limits; `kill -9` of the center during a settle load loses no acknowledged
settlement, and its accumulators equal a recomputation from its ledger."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import psycopg
import pytest

from clients.sdk import MedsettleClient, MedsettleError
from server.demo.localserver import LocalServer
from server.persons import ACC_FIELDS
from tests.harness import CIVIL, EMPLOYEE, RETIRED, admit, client, total

pytestmark = pytest.mark.pg


def front_in_center_mode(center: LocalServer, tmp: Path, node: str) -> LocalServer:
    return LocalServer(
        tmp / f"front{node}.db",
        extra=["--mode", "center", "--center-target", center.target],
        env={"MEDSETTLE_NODE_ID": node, "MEDSETTLE_CENTER_DEADLINE_S": "2"},
        log=tmp / f"front{node}.log",
    )


def test_two_front_ends_settling_one_person_keep_the_limits(pg_dsn: str, tmp_path: Path) -> None:
    center = LocalServer(pg_dsn, workers=2, extra=["--role", "center"], log=tmp_path / "c.log")
    center.start()
    fronts = [front_in_center_mode(center, tmp_path, n).start() for n in ("01", "02")]
    try:
        jobs = []
        for i, front in enumerate(fronts):
            c = client(front)
            for seed in range(12):
                mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=8, seed=100 * i + seed, med_type=11)
                jobs.append((front, mdtrt_id, total(ls)))
        results = []

        def run(front: LocalServer, mdtrt_id: str, amount: int) -> None:
            c = client(front)
            results.append(c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=amount).setlinfo)

        threads = [threading.Thread(target=run, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 24
        in_scope = sum(r.inscp_scp_amt for r in results)
        assert sum(r.act_pay_dedc for r in results) == min(50_000, in_scope)
        assert sum(r.hifp_pay for r in results) <= 600_000
        with psycopg.connect(pg_dsn) as conn:
            acc = conn.execute(
                "SELECT dedc_paid, hifp_paid FROM accumulators WHERE psn_no = %s AND opening = 0",
                (EMPLOYEE.psn_no,),
            ).fetchall()
        assert acc == [(sum(r.act_pay_dedc for r in results), sum(r.hifp_pay for r in results))]
    finally:
        for f in fronts:
            f.stop()
        center.stop()


def test_kill_9_of_the_center_loses_nothing_acknowledged(pg_dsn: str, tmp_path: Path) -> None:
    center = LocalServer(pg_dsn, workers=2, extra=["--role", "center"], log=tmp_path / "c.log")
    center.start()
    front = front_in_center_mode(center, tmp_path, "01").start()
    acked: list[str] = []
    try:
        c = client(front)
        visits = []
        for seed in range(60):
            psn = (EMPLOYEE, RETIRED, CIVIL)[seed % 3]
            mdtrt_id, ls = admit(c, psn, n_lines=5, seed=200 + seed, med_type=11)
            visits.append((psn.psn_no, mdtrt_id, total(ls)))
        lock = threading.Lock()

        def drive(part: list[tuple[str, str, int]]) -> None:
            d = MedsettleClient(
                front.target, fixmedins_code=c.fixmedins_code, opter=c.opter, retries=0
            )
            d.sign_no = c.sign_no
            for psn_no, mdtrt_id, amount in part:
                try:
                    info = d.settle(mdtrt_id, psn_no, medfee_sumamt=amount).setlinfo
                except MedsettleError:
                    continue  # not acknowledged: may or may not be at the center
                with lock:
                    acked.append(info.setl_id)

        for rnd in range(3):
            part = visits[rnd * 20 : (rnd + 1) * 20]
            threads = [threading.Thread(target=drive, args=(part[i::4],)) for i in range(4)]
            for t in threads:
                t.start()
            time.sleep(random.uniform(0.05, 0.4))
            center.kill()
            for t in threads:
                t.join(60)
            center = LocalServer(
                pg_dsn,
                port=center.port,
                workers=2,
                extra=["--role", "center"],
                log=tmp_path / f"c{rnd}.log",
            ).start()
        assert acked, "the load acknowledged nothing"
        with psycopg.connect(pg_dsn) as conn:
            held = {
                r[0]
                for r in conn.execute("SELECT setl_id FROM settlements WHERE state = 1").fetchall()
            }
            assert set(acked) <= held
            legs = conn.execute(
                "SELECT COUNT(*) FROM settlements s WHERE NOT EXISTS"
                " (SELECT 1 FROM setl_legs l WHERE l.setl_id = s.setl_id)"
            ).fetchone()
            assert legs == (0,)  # none partial
            deltas: dict[tuple[str, int, str], dict[str, int]] = {}
            for psn_no, year, pool, delta in conn.execute(
                "SELECT psn_no, acc_year, acc_pool, acc_delta FROM settlements WHERE state = 1"
            ).fetchall():
                d = delta if isinstance(delta, dict) else json.loads(delta)
                acc = deltas.setdefault((psn_no, year, pool), dict.fromkeys(ACC_FIELDS, 0))
                for f in ACC_FIELDS:
                    acc[f] += d[f]
            cols = ", ".join(ACC_FIELDS)
            for (psn_no, year, pool), expected in deltas.items():
                opening = conn.execute(
                    f"SELECT {cols} FROM accumulators WHERE psn_no = %s AND year = %s"
                    " AND pool = %s AND opening = 1",
                    (psn_no, year, pool),
                ).fetchone() or (0,) * len(ACC_FIELDS)
                current = conn.execute(
                    f"SELECT {cols} FROM accumulators WHERE psn_no = %s AND year = %s"
                    " AND pool = %s AND opening = 0",
                    (psn_no, year, pool),
                ).fetchone()
                assert current == tuple(
                    o + expected[f] for o, f in zip(opening, ACC_FIELDS, strict=True)
                )
    finally:
        front.stop()
        center.stop()
