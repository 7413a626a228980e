"""grpc.aio's own cost of a call on this machine: a bare server (one generic handler that
answers `Settlement/Ping` with the request's bytes; no interceptors, guards or metrics)
under the same load generator as `bench.bench_frontend`'s Ping. What medsettle's Ping and
Settle cost above it is medsettle's; what is below it no change to medsettle can take off
while its calls are answered by grpc.aio (bench/RESULTS.md, issue 15 step 22). The CPU is
counted as `bench.bench_frontend` counts it (the server's over the round, by the round's
rate).

    .venv/bin/python -m bench.bench_grpc_floor --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from typing import Any

import grpc
import psutil

from bench.bench_frontend import run_load

PATH = ("medsettle.v1.Settlement", "Ping")


def _serve(ready: Any) -> None:
    """The bare server, in its own process; sends its port through `ready`."""

    async def ping(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            PATH[0], {PATH[1]: grpc.unary_unary_rpc_method_handler(ping)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        ready.send(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    ap.add_argument("--channels", type=int, default=4, help="connections")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds a round")
    args = ap.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(theirs,), daemon=True)
    proc.start()
    theirs.close()  # a server that dies before answering ends the wait (EOFError)
    try:
        if not ours.poll(60):
            raise SystemExit("the bare server did not start within 60 s")
        port = ours.recv()
        server = psutil.Process(proc.pid)
        for r in range(1, args.rounds + 1):
            before = server.cpu_times()
            t0 = time.perf_counter()
            got = run_load(
                "ping",
                f"127.0.0.1:{port}",
                "",
                [],
                1,
                args.concurrency,
                args.duration,
                args.channels,
            )
            elapsed = time.perf_counter() - t0
            after = server.cpu_times()
            cores = (after.user + after.system - before.user - before.system) / elapsed
            print(
                f"round {r}: bare grpc.aio Ping {got['per_s']:,.0f}/s, server {cores:.2f} cores,"
                f" {cores * 1e6 / got['per_s']:.0f} us a call, p50 {got['p50_ms']:.2f} ms,"
                f" errors {got['errors']}",
                flush=True,
            )
    finally:
        proc.kill()
        proc.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
