"""The 5,000-line inpatient stay alone (issue 15's target: stream, pre-settle and settle
within 100 ms): a front-end with nothing else to do, stays one after another, each phase's
median and best. `bench.bench_frontend` times the same stay after its load; this one leaves
the load out, so a change to the upload path shows without the load's noise.

    .venv/bin/python -m bench.bench_stay --stays 8 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import operators
from bench.bench_frontend import INST, inpatient_stay
from server.demo.localserver import LocalServer

PHASES = ("stream_ms", "presettle_ms", "settle_ms", "total_ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=5000, help="fee lines a stay")
    ap.add_argument("--stays", type=int, default=8, help="stays timed a round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medsettle-bench-") as tmp:
        server = LocalServer(Path(tmp) / "stay.db", log=Path(tmp) / "server.log").start()
        try:
            password = operators.register(server, INST, "bench")
            inpatient_stay(server.target, args.lines, password)  # warm: catalog, policy
            for r in range(1, args.rounds + 1):
                stays = [
                    inpatient_stay(server.target, args.lines, password) for _ in range(args.stays)
                ]
                figures = ", ".join(
                    f"{p.removesuffix('_ms')} {statistics.median(s[p] for s in stays):.0f}"
                    f" (best {min(s[p] for s in stays):.0f})"
                    for p in PHASES
                )
                print(f"round {r}, {args.stays} stays of {args.lines} lines, ms: {figures}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
