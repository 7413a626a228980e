"""What reading a hot request costs per call, without the network: the load kit's Settle
request as the handler gets it before the ledger takes it, read in Python (parsed by
protobuf, `limits.check_ids`, `common.check_header`, `common.request_hash`, serialised
again for the ledger) and read at the door in the engine (server/door.py `admit`, then
`check_header` over the door's header).

    .venv/bin/python -m bench.bench_door --calls 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from bench.bench_signing import settle_request
from medsettle.v1 import settlement_pb2
from server import door, limits
from server.common import check_header, request_hash


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    cls = settlement_pb2.SettleRequest
    data = settle_request().SerializeToString()

    def in_python() -> bytes:
        req = cls.FromString(data)
        limits.check_ids(req)
        check_header(req.header, needs_msgid=True)
        request_hash("Settle", req)
        return req.SerializeToString()

    def at_the_door() -> bytes:
        raw = door.admit(cls, "Settle", data)
        check_header(raw.header, needs_msgid=True)
        return raw.data

    for r in range(args.rounds):
        python_us = per_call_us(in_python, args.calls)
        door_us = per_call_us(at_the_door, args.calls)
        print(
            f"round {r + 1}, per Settle request ({len(data)} bytes): read in Python"
            f" {python_us:.1f} us, at the door {door_us:.1f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
