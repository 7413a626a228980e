"""Catalog matching benchmark: recall, index build, batch throughput, memory, and RapidFuzz
on the same queries.

    python -m bench.bench_matching [--items N --queries Q --rapidfuzz-queries R]

Generates a synthetic catalog of N items (server/demo/synth/catalog.py) with the mappings of a
hospital, loads it, builds `engine_rs.Matcher`, matches Q hospital items with `match_many`
on one thread, and runs RapidFuzz `process.extract` (WRatio) over the same catalog for the
first R queries, extrapolating its time to Q. Prints the figures and writes them, with the
command that produced them, to bench/RESULTS_matching.md.

Also holds `test_match_many(benchmark)` for pytest-benchmark:
`pytest bench/bench_matching.py --benchmark-enable`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import engine_rs
from server.demo.synth.catalog import HospitalItems, make_catalog, make_hospital_items
from server.demo.synth.match_eval import load as load_eval

RESULTS = Path(__file__).with_name("RESULTS_matching.md")
EVAL = Path(__file__).resolve().parent.parent / "tests" / "data" / "match_eval.jsonl"


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB, from /proc (Linux)."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def release_freed() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc `malloc_trim`), so
    RSS shows what is held rather than what the allocator keeps cached."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def recall(idx: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> tuple[float, float]:
    """(recall@1, recall@k) of candidate rows against the true item indices."""
    return float(np.mean(idx[:, 0] == truth)), float(np.mean((idx == truth[:, None]).any(axis=1)))


def match_all(m: engine_rs.Matcher, h: HospitalItems, k: int = 5) -> npt.NDArray[np.int64]:
    c = h.columns()
    idx, _ = m.match_many(c["name"], c["spec"], c["dosage_form"], c["manufacturer"], k=k)
    return idx


def eval_set_recall() -> tuple[float, float, int]:
    header, records = load_eval(EVAL)
    cat = make_catalog(header["catalog"]["n"], header["catalog"]["seed"])
    catalog = engine_rs.Catalog.load(cat.items, selfpay_psn_types=cat.selfpay_psn_types)
    m = engine_rs.Matcher(catalog)
    from server.columns import pack_strings

    idx, _ = m.match_many(
        pack_strings([r.name for r in records]),
        pack_strings([r.spec for r in records]),
        pack_strings([r.dosage_form for r in records]),
        pack_strings([r.manufacturer for r in records]),
        k=5,
    )
    truth = np.array([catalog.lookup(r.code) for r in records], dtype=np.int64)
    r1, r5 = recall(idx, truth)
    return r1, r5, len(records)


def rapidfuzz_run(
    items: int, seed: int, queries: HospitalItems, n: int
) -> tuple[float, float, float, npt.NDArray[np.int64]]:
    """RapidFuzz WRatio top-5 over the whole catalog for the first n queries:
    (seconds per query, recall@1, recall@5, our indices are not used here)."""
    from rapidfuzz import fuzz, process, utils

    cat = make_catalog(items, seed)
    cols = [cat.column(k) for k in ("name", "spec", "dosage_form", "manufacturer")]
    choices = [" ".join(parts) for parts in zip(*cols, strict=True)]
    del cat, cols
    gc.collect()
    found = np.full((n, 5), -1, dtype=np.int64)
    t = time.perf_counter()
    for i in range(n):
        q = " ".join(
            (queries.name[i], queries.spec[i], queries.dosage_form[i], queries.manufacturer[i])
        )
        hits = process.extract(
            q, choices, scorer=fuzz.WRatio, processor=utils.default_process, limit=5
        )
        for j, (_, _, index) in enumerate(hits):
            found[i, j] = index
    per_query = (time.perf_counter() - t) / max(n, 1)
    r1, r5 = recall(found, queries.true_index[:n])
    return per_query, r1, r5, found


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["rss_start_mb"], _ = rss_mb()
    t = time.perf_counter()
    cat = make_catalog(args.items, args.seed)
    out["gen_s"] = time.perf_counter() - t
    # A hospital's item list, most of it mapped (对照), and the items to match.
    hospital = make_hospital_items(cat, args.mapped_items, args.seed + 1)
    mappings = hospital.mappings(0.8, seed=args.seed)
    del hospital
    queries = make_hospital_items(cat, args.queries, args.seed + 2)
    qcols = queries.columns()
    t = time.perf_counter()
    catalog = engine_rs.Catalog.load(cat.items, mappings, selfpay_psn_types=cat.selfpay_psn_types)
    out["load_s"] = time.perf_counter() - t
    out["mappings"] = catalog.mapping_count
    del cat, mappings
    release_freed()
    out["rss_catalog_mb"], _ = rss_mb()

    t = time.perf_counter()
    matcher = engine_rs.Matcher(catalog)
    out["build_s"] = time.perf_counter() - t
    release_freed()
    out["rss_index_mb"], out["peak_mb"] = rss_mb()

    t = time.perf_counter()
    idx, _ = matcher.match_many(
        qcols["name"], qcols["spec"], qcols["dosage_form"], qcols["manufacturer"], k=5
    )
    out["match_s"] = time.perf_counter() - t
    out["qps"] = args.queries / out["match_s"]
    out["r1"], out["r5"] = recall(idx, queries.true_index)
    out["eval_r1"], out["eval_r5"], out["eval_n"] = eval_set_recall()

    if args.rapidfuzz_queries > 0:
        n = min(args.rapidfuzz_queries, args.queries)
        del matcher, catalog
        gc.collect()
        per_query, rf1, rf5, _ = rapidfuzz_run(args.items, args.seed, queries, n)
        out["rf_n"] = n
        out["rf_per_query_s"] = per_query
        out["rf_extrapolated_s"] = per_query * args.queries
        out["rf_r1"], out["rf_r5"] = rf1, rf5
        out["ours_r1_subset"], out["ours_r5_subset"] = recall(idx[:n], queries.true_index[:n])
    return out


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    cmd = "python -m bench.bench_matching " + " ".join(sys.argv[1:])
    lines = [
        "# Catalog matching benchmark",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}, {platform.system()}; "
        "`match_many` runs on one thread.",
        "",
        f"Catalog: {args.items:,} synthetic items (seed {args.seed}), "
        f"{r['mappings']:,} hospital mappings loaded with it; "
        f"{args.queries:,} hospital items as queries"
        " (variants as in server/demo/synth/variants.py).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| catalog generation | {r['gen_s']:.2f} s |",
        f"| `Catalog.load` (with mappings) | {r['load_s']:.2f} s |",
        f"| `Matcher` build | {r['build_s']:.2f} s |",
        f"| `match_many`, {args.queries:,} queries x {args.items:,} items, 1 thread "
        f"| {r['match_s']:.2f} s ({r['qps']:,.0f} queries/s) |",
        f"| recall@1 / recall@5 on these queries | {r['r1']:.4f} / {r['r5']:.4f} |",
        f"| recall@1 / recall@5 on tests/data/match_eval.jsonl ({r['eval_n']} items, "
        f"30k catalog) | {r['eval_r1']:.4f} / {r['eval_r5']:.4f} |",
        f"| RSS at start (Python, numpy, engine_rs imported) | {r['rss_start_mb']:.0f} MB |",
        f"| RSS: ... + catalog with mappings (generator's columns freed, heap trimmed) "
        f"| {r['rss_catalog_mb']:.0f} MB |",
        f"| RSS: ... + matcher index | {r['rss_index_mb']:.0f} MB "
        f"(index {r['rss_index_mb'] - r['rss_catalog_mb']:.0f} MB) |",
        f"| peak RSS so far (generation temporaries included) | {r['peak_mb']:.0f} MB |",
    ]
    if "rf_n" in r:
        lines += [
            "",
            f"RapidFuzz `process.extract(query, choices, scorer=WRatio, "
            f"processor=default_process, limit=5)` over the same {args.items:,} catalog "
            f"strings (name, spec, form, maker joined), on the first {r['rf_n']} queries; its "
            f"time for all {args.queries:,} queries is extrapolated from those.",
            "",
            "| | engine_rs.Matcher | RapidFuzz WRatio |",
            "|---|---|---|",
            f"| time per query | {r['match_s'] / args.queries * 1e3:.3f} ms "
            f"| {r['rf_per_query_s'] * 1e3:.1f} ms |",
            f"| {args.queries:,} queries | {r['match_s']:.2f} s "
            f"| {r['rf_extrapolated_s']:.0f} s (extrapolated) |",
            f"| recall@1 / @5 on the {r['rf_n']} queries | {r['ours_r1_subset']:.3f} / "
            f"{r['ours_r5_subset']:.3f} | {r['rf_r1']:.3f} / {r['rf_r5']:.3f} |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="Catalog matching benchmark")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument(
        "--mapped-items",
        type=int,
        default=50_000,
        help="hospital items behind the mappings (80%% of them mapped)",
    )
    ap.add_argument("--rapidfuzz-queries", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    r = run(args)
    text = report(args, r)
    print(text)
    args.out.write_text(text, encoding="utf-8")


def test_match_many(benchmark: Any) -> None:
    """pytest-benchmark: 1,000 queries against a 100k-item catalog."""
    cat = make_catalog(100_000, seed=3)
    catalog = engine_rs.Catalog.load(cat.items, selfpay_psn_types=cat.selfpay_psn_types)
    matcher = engine_rs.Matcher(catalog)
    queries = make_hospital_items(cat, 1_000, seed=4)
    idx = benchmark(match_all, matcher, queries)
    assert recall(idx, queries.true_index)[1] >= 0.95


if __name__ == "__main__":
    main()
