"""What tools and operators see of a running server: standard health and reflection (so
grpcurl-style tools work), the command line's operator commands, and the order in which
settings are read (defaults < file < environment < flags)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from server.config import load
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer
from tests.harness import EMPLOYEE, admit, client, total

ROOT = Path(__file__).resolve().parents[2]


def test_health_and_reflection(frontend: LocalServer) -> None:
    with grpc.insecure_channel(frontend.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "medsettle.v1.Settlement", "medsettle.v1.Catalog"):
            r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)  # type: ignore[attr-defined]
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {
            "medsettle.v1.Settlement",
            "medsettle.v1.Catalog",
            "medsettle.v1.Reconciliation",
            "grpc.health.v1.Health",
        } <= services
        pool = descriptor_pool.DescriptorPool(db)
        methods = pool.FindServiceByName("medsettle.v1.Settlement").methods_by_name
        assert {"Settle", "PreSettle", "Reverse", "StreamFees", "Ping"} <= set(methods)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_operator_commands_print_the_slip_and_the_day(frontend: LocalServer) -> None:
    c = client(frontend)
    mdtrt_id, ls = admit(c, EMPLOYEE, n_lines=6, seed=31, med_type=11)
    info = c.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=total(ls)).setlinfo
    pw = ("--password-file", str(demo_data.password_file(frontend.db)))
    slip = _cli(
        "slip",
        *("--target", frontend.target, "--institution", c.fixmedins_code, *pw),
        *("--opter", "cashier01", info.setl_id),
    )
    assert slip.returncode == 0, slip.stderr
    assert info.setl_id in slip.stdout and "hifp_pay 统筹基金支付" in slip.stdout
    day = str(info.setl_time.ToDatetime().year)  # the reconcile day is today's (local) date
    rec = _cli(
        "reconcile",
        *("--target", frontend.target, "--institution", c.fixmedins_code, "--opter", "finance01"),
        *pw,
    )
    assert rec.returncode == 0, rec.stderr
    assert day in rec.stdout and " 1 " in rec.stdout
    missing = _cli(
        "slip",
        *("--target", frontend.target, "--institution", c.fixmedins_code, *pw),
        *("--opter", "cashier01", "S0"),
    )
    assert missing.returncode == 4 and "NOT_FOUND" in missing.stderr  # refused by the server


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "medsettle.toml"
    f.write_text("[server]\nport = 6000\nworkers = 3\nsign_ttl_s = 60\n", encoding="utf-8")
    monkeypatch.setenv("MEDSETTLE_WORKERS", "2")
    monkeypatch.setenv("MEDSETTLE_GRACE_S", "2.5")
    cfg = load(str(f), {"port": 7000, "db": None})
    assert (cfg.port, cfg.workers, cfg.sign_ttl_s, cfg.grace_s) == (7000, 2, 60, 2.5)
    assert cfg.db == "medsettle.db"  # a flag not given leaves the default
    f.write_text("[server]\nprot = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown setting 'prot'"):
        load(str(f), {})
    f.write_text('[server]\ncenters = "440100=127.0.0.9:1, 440300=h:2"\n', encoding="utf-8")
    assert load(str(f), {}).center_routes() == {"440100": "127.0.0.9:1", "440300": "h:2"}
    f.write_text('[server]\ncenters = "gz:1"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="region=host:port"):
        load(str(f), {})
    with pytest.raises(ValueError, match="center_target"):
        load(None, {"mode": "center"})
    monkeypatch.setenv("MEDSETTLE_WORKERS", "two")
    with pytest.raises(ValueError, match="workers"):
        load(None, {})


def test_serve_refuses_a_bad_setting(tmp_path: Path) -> None:
    r = _cli("serve", "--db", str(tmp_path / "x.db"), "--workers", "0")
    assert r.returncode == 2 and "workers" in r.stderr
