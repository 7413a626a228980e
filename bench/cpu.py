"""CPU accounting for the benchmarks: how many cores each server, PostgreSQL and the rest of
the machine (the load generator, mostly) kept busy during a measurement, from psutil."""

from __future__ import annotations

import psutil

from server.demo.localserver import LocalServer


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live children."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def cpu_snapshot(servers: dict[str, LocalServer]) -> dict[str, float]:
    """CPU seconds so far of each server's process tree, of the PostgreSQL processes, and of
    the whole machine (busy time), to split a measurement's CPU between them."""
    out = {name: _tree_cpu(s.proc.pid) for name, s in servers.items() if s.proc is not None}
    pg = 0.0
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in ("postgres", "postmaster"):
            try:
                t = p.cpu_times()
                pg += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    out["postgres"] = pg
    m = psutil.cpu_times()
    busy = m.user + m.system + m.nice
    out["machine"] = busy + getattr(m, "irq", 0.0) + getattr(m, "softirq", 0.0)
    return out


def cores_used(
    before: dict[str, float], after: dict[str, float], elapsed: float
) -> dict[str, float]:
    """Cores each part kept busy over `elapsed`; "rest" is the machine minus the parts named
    (the load generator, mostly)."""
    used = {k: (after[k] - before[k]) / elapsed for k in before}
    used["rest"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
    return {k: round(v, 2) for k, v in used.items()}
