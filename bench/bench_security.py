"""What transport security and request signing cost (issue 6): the Settle of prepared
outpatient visits through the load kit against a plaintext front-end and against ones that
require mutual TLS alone, with HMAC-SM3-signed requests, and with SM3withSM2-signed
requests, in turn, with the same generator.

    .venv/bin/python -m bench.bench_security --rounds 2 --prepared 8000 \
        --json bench/security_figures.json

Each run spawns its own front-end (`bench.load --spawn`); each ratio is that variant's
Settles/s over plaintext Settles/s (the goal for mutual TLS plus signing is at least 0.85).
The prepared Settles are signed before the clock starts, so the figure is the server's cost
(a retry within the run is signed at call time, as a HIS would).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import load

VARIANTS: dict[str, list[str]] = {
    "plaintext": [],
    "mutual TLS": ["--tls"],
    "mutual TLS + HMAC-SM3": ["--tls", "--signing", "hmac"],
    "mutual TLS + SM3withSM2": ["--tls", "--signing", "sm2"],
}


def one(variant: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out = tmp / "run.json"
    argv = [
        *("--spawn", "--workers", str(args.workers), "--clients", str(args.clients)),
        *("--prepared", str(args.prepared), "--inpatient-share", "0", "--duration", "60"),
        *("--ping-duration", "0", "--quiet", "--json", str(out)),
        *VARIANTS[variant],
    ]
    if load.main(argv) != 0:
        raise SystemExit(f"the {variant} run did not balance")
    r = json.loads(out.read_text())
    return {
        "settles_per_s": r["settles_per_s"],
        "p50_ms": r["latency"]["Settle"]["p50_ms"],
        "p99_ms": r["latency"]["Settle"]["p99_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prepared", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.rounds):
            for variant in VARIANTS:
                runs[variant].append(one(variant, args, Path(d)))
    rate = {v: statistics.mean(r["settles_per_s"] for r in rs) for v, rs in runs.items()}
    ratios = {v: rate[v] / rate["plaintext"] for v in VARIANTS}
    report = {"args": vars(args), "runs": runs, "settles_per_s": rate, "ratio": ratios}
    for v in VARIANTS:
        print(f"Settle, {v}: {rate[v]:,.0f}/s, {ratios[v]:.2f} of plaintext")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
