"""The load kit end to end, as a load tester runs it: short bounded runs against a front-end
it starts (two workers), closed and open loop, with retries, cancels and inpatient stays; the
report's books must balance and every retry must have been answered with the first answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_kit(tmp: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    report = tmp / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", "--spawn", "--quiet", "--json", str(report), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return out.returncode, json.loads(report.read_text()), out.stdout + out.stderr


def test_closed_loop_with_retries_cancels_and_stays(tmp_path: Path) -> None:
    plot = tmp_path / "run.png"
    code, r, text = run_kit(
        tmp_path,
        *("--workers", "2", "--clients", "2", "--concurrency", "16", "--duration", "4"),
        *("--ping-duration", "1", "--persons", "500", "--retry-rate", "0.3"),
        *("--cancel-rate", "0.2", "--inpatient-share", "0.1", "--max-stay-lines", "300"),
        *("--plot", str(plot)),
    )
    assert code == 0, text
    books = r["books"]
    assert books["balanced"] and not books["problems"], books
    assert books["acknowledged"] == books["at_server"] == r["settles"] > 0
    assert books["cancelled"] == r["cancels"] > 0
    assert r["retries_identical"] > 0 and r["retries_different"] == 0
    assert r["errors"] == {}
    assert r["latency"]["Settle"]["count"] == r["settles"]
    assert r["latency"]["Settle inpatient"]["count"] > 0  # stays were streamed and settled
    assert r["latency"]["StreamFees"]["count"] > 0
    assert r["ping"]["per_s"] > 0 and 0 < r["settle_to_ping"] < 1
    assert r["timeline"] and all(s["settles"] >= 0 for s in r["timeline"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "books:" in text and "balanced" in text


def test_open_loop_keeps_its_schedule(tmp_path: Path) -> None:
    code, r, text = run_kit(
        tmp_path,
        *("--rate", "40", "--duration", "4", "--ping-duration", "0"),
        *("--inpatient-share", "0", "--retry-rate", "0.1"),
    )
    assert code == 0, text
    assert r["books"]["balanced"], r["books"]
    # A Poisson schedule of 40 visits/s over 4 s: about 160 visits, whatever the server does.
    assert 80 <= r["visits"] <= 260, r["visits"]
    assert r["ping"] is None and r["settle_to_ping"] is None


def test_prepared_visits_time_only_their_settle(tmp_path: Path) -> None:
    code, r, text = run_kit(
        tmp_path,
        *("--prepared", "300", "--duration", "60", "--ping-duration", "1"),
        *("--retry-rate", "0.2", "--cancel-rate", "0"),
    )
    assert code == 0, text
    # Every prepared visit settled once, then the run ended without waiting out its minute.
    assert r["settles"] == r["visits"] == r["books"]["acknowledged"] == 300
    assert r["books"]["balanced"] and r["retries_identical"] > 0
    assert "Register" not in r["latency"] and "UploadFees" not in r["latency"]
    assert r["latency"]["Settle"]["count"] == 300


def test_generated_catalog_and_policy_of_a_chosen_size(tmp_path: Path) -> None:
    policy = (ROOT / "server" / "demo" / "demo_city_policy.toml").read_text("utf-8")
    assert "version = 2026_01" in policy
    mine = tmp_path / "policy.toml"
    mine.write_text(policy.replace("version = 2026_01", "version = 2026_07"), "utf-8")
    code, r, text = run_kit(
        tmp_path,
        *("--catalog", "6000", "--his-items", "1500", "--policy", str(mine)),
        *("--prepared", "60", "--duration", "30", "--ping-duration", "0", "--cancel-rate", "0"),
    )
    assert code == 0, text
    ref = r["reference"]
    assert ref["catalog_items"] == 6000 and ref["catalog_version"] > 1
    assert ref["his_items"] == 1500 and 1300 < ref["mapped"] < 1500  # 92 % mapped
    assert (ref["policy_id"], ref["policy_version"]) == ("demo-city", 2026_07)
    assert r["books"]["balanced"] and r["settles"] == 60
    # The lines carry codes only the new item master has: had its mappings not been loaded,
    # every line would be unmapped, self-paid, and no fund would pay anything.
    assert r["fund_pay_sumamt"] > 0


def test_mutual_tls_and_signed_calls(tmp_path: Path) -> None:
    """The kit against a front-end that requires client certificates and signatures: every
    call (SignIn, Register, UploadFees, Settle, retries, cancels, the books) gets through."""
    code, r, text = run_kit(
        tmp_path,
        *("--tls", "--signing", "--prepared", "80", "--duration", "30"),
        *("--ping-duration", "0", "--retry-rate", "0.2", "--cancel-rate", "0.1"),
    )
    assert code == 0, text
    assert r["settles"] == 80 and r["errors"] == {}
    assert r["books"]["balanced"] and r["retries_identical"] > 0 and r["cancels"] > 0
