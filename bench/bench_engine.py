"""Engine benchmarks at the sizes issue 2 names: preprocessing a 1 M-line batch against a
100 k-item catalog (and the twin on a sample), fund split in batch, and loading a 1 M-item
catalog with 1 M mappings (time and resident memory, in a fresh process).

    python -m bench.bench_engine                # full sizes, prints a Markdown table
    python -m bench.bench_engine --quick        # small sizes, for a smoke run
    python -m bench.bench_engine --only preprocess   # one part, figures as JSON (iterating)

The engine is single-threaded, so every figure is for one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

import engine_rs
from server.columns import numbered_codes, take_strings, unpack_strings
from tests.engine import twin

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "server" / "demo" / "demo_city_policy.toml"
# Outpatient-sized visits and inpatient-sized stays.
VISIT_SHAPES = (10, 1_000)


def best_of(runs: int, fn: Callable[[], Any]) -> float:
    """Best wall time of `runs` calls, in seconds (the least disturbed run)."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_catalog(n_items: int, seed: int) -> tuple[engine_rs.Catalog, dict[str, Any]]:
    """A synthetic catalog with a mapping for 95 % of its items (hospital codes H........)."""
    from server.demo.synth.catalog import make_catalog

    synth = make_catalog(n_items, seed=seed)
    rng = np.random.default_rng(seed)
    mapped = np.sort(rng.choice(n_items, size=n_items * 95 // 100, replace=False))
    hosp = numbered_codes("H", n_items)
    mappings: engine_rs.CatalogMappings = {
        "hosp_code": take_strings(hosp, mapped),
        "ins_code": take_strings(synth.items["code"], mapped),
    }
    cat = engine_rs.Catalog.load(
        synth.items, mappings, version=1, selfpay_psn_types=list(synth.selfpay_psn_types)
    )
    return cat, {"synth": synth, "hosp": hosp}


def make_lines(
    cat: engine_rs.Catalog, ctx: dict[str, Any], n_lines: int, seed: int, per_visit: int = 10
) -> tuple[engine_rs.BatchFeeLines, engine_rs.VisitColumns]:
    """Fee lines over n_lines/per_visit visits; 5 % of the catalog has no mapping."""
    rng = np.random.default_rng(seed + 1)
    n_items = len(cat)
    pick = rng.integers(0, n_items, n_lines)
    caps = ctx["synth"].items["price_cap"][pick]
    base = np.where(caps > 0, caps, rng.integers(50, 50_000, n_lines))
    # a fifth of the lines are priced above their cap, as hospitals' prices often are
    pric = np.where(rng.random(n_lines) < 0.2, base + base // 5, base).astype(np.int64)
    cnt = rng.integers(1, 40, n_lines).astype(np.int64) * 5_000  # half units
    amount = (pric * cnt) // 10_000
    n_visits = max(1, n_lines // per_visit)
    lines: engine_rs.BatchFeeLines = {
        "medins_list_codg": take_strings(ctx["hosp"], pick),
        "cnt": cnt,
        "pric": pric,
        "det_item_fee_sumamt": amount,
        "hosp_appr_flag": np.where(rng.random(n_lines) < 0.01, 2, 0).astype(np.int64),
        "visit": np.sort(rng.integers(0, n_visits, n_lines)).astype(np.int64),
    }
    visits: engine_rs.VisitColumns = {
        "treatment": rng.choice([1, 2, 3], n_visits, p=[0.6, 0.3, 0.1]).astype(np.int64),
        "date": np.full(n_visits, 20260615, dtype=np.int64),
        "psn_type": rng.choice([11, 12], n_visits).astype(np.int64),
        "sex": rng.integers(1, 3, n_visits).astype(np.int64),
        "age": rng.integers(0, 100, n_visits).astype(np.int64),
    }
    return lines, visits


def bench_preprocess(args: argparse.Namespace, out: dict[str, Any], per_visit: int) -> None:
    t0 = time.perf_counter()
    cat, ctx = build_catalog(args.items, args.seed)
    out["preprocess_catalog_build_s"] = time.perf_counter() - t0
    policy = engine_rs.Policy.from_toml(POLICY.read_text(encoding="utf-8"))
    lines, visits = make_lines(cat, ctx, args.lines, args.seed, per_visit)
    dt = best_of(3, lambda: engine_rs.preprocess_batch(cat, policy, lines, visits))
    out["preprocess_lines"] = args.lines
    out["preprocess_items"] = args.items
    out["preprocess_s"] = dt
    out["preprocess_lines_per_s"] = args.lines / dt

    # The twin on the first visits' lines, through the same inputs.
    sample = int(np.searchsorted(lines["visit"], args.lines // per_visit // 50))
    sample = max(sample, min(args.lines, 2_000))
    synth = ctx["synth"].items
    codes = unpack_strings(synth["code"])
    sp = synth["selfpay_prop_bp"]
    items = [
        twin.Item(
            code=codes[i],
            chrgitm_lv=int(synth["chrgitm_lv"][i]),
            fee_category=int(synth["fee_category"][i]),
            price_cap=int(synth["price_cap"][i]),
            selfpay_prop_bp=[int(x) for x in sp[i]],
            inpatient_only=bool(synth["inpatient_only"][i]),
            sex=int(synth["sex"][i]),
            age_min=int(synth["age_min"][i]),
            age_max=int(synth["age_max"][i]),
            diagnoses=[d for d in s.split(",") if d],
            valid_from=int(synth["valid_from"][i]),
            valid_to=int(synth["valid_to"][i]),
        )
        for i, s in enumerate(unpack_strings(synth["diagnoses"]))
    ]
    by_code = {it.code: i for i, it in enumerate(items)}
    hosp_codes = unpack_strings(ctx["hosp"])
    mappings = {
        hosp_codes[i]: codes[i]
        for i in range(len(codes))
        if cat.map_hosp_code(hosp_codes[i]) is not None
    }
    psn_types = list(ctx["synth"].selfpay_psn_types)
    head = np.arange(sample)

    def twin_inputs() -> tuple[dict[int, list[twin.Line]], dict[int, twin.VisitContext]]:
        """The sample's columns read into the twin's objects."""
        line_codes = unpack_strings(take_strings(lines["medins_list_codg"], head))
        cols = [lines[k][:sample].tolist() for k in ("cnt", "pric", "det_item_fee_sumamt")]
        appr, vis = lines["hosp_appr_flag"][:sample].tolist(), lines["visit"][:sample].tolist()
        by_visit: dict[int, list[twin.Line]] = {}
        for i in range(sample):
            by_visit.setdefault(vis[i], []).append(
                twin.Line(line_codes[i], cols[0][i], cols[1][i], cols[2][i], hosp_appr_flag=appr[i])
            )
        ctxs = {
            v: twin.VisitContext(
                treatment=int(visits["treatment"][v]),
                psn_type=int(visits["psn_type"][v]),
                sex=int(visits["sex"][v]),
                age=int(visits["age"][v]),
                date=int(visits["date"][v]),
            )
            for v in by_visit
        }
        return by_visit, ctxs

    by_visit, ctxs = twin_inputs()

    def run_twin() -> list[twin.LineResult]:
        results: list[twin.LineResult] = []
        for v, ls in by_visit.items():
            results += twin.preprocess(
                items, psn_types, mappings, ls, ctxs[v], 1, "half_up", by_code
            )[0]
        return results

    def run_twin_columnar() -> None:
        """The same job as the Rust call: columns in, columns out."""
        nonlocal by_visit, ctxs
        by_visit, ctxs = twin_inputs()
        res = run_twin()
        for f in ("item", "fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt"):
            np.array([getattr(r, f) for r in res], dtype=np.int64)
        np.array([r.flags for r in res], dtype=np.uint16)

    out["twin_sample_lines"] = sample
    out["twin_lines_per_s"] = sample / best_of(1, run_twin)
    out["twin_columnar_lines_per_s"] = sample / best_of(1, run_twin_columnar)
    out["preprocess_speedup_vs_twin"] = out["preprocess_lines_per_s"] / out["twin_lines_per_s"]
    out["preprocess_speedup_vs_twin_columnar"] = (
        out["preprocess_lines_per_s"] / out["twin_columnar_lines_per_s"]
    )


def split_columns(n: int, seed: int) -> engine_rs.SettlementColumns:
    """Settlement rows across the demo policy's rules, persons and accumulator states."""
    rng = np.random.default_rng(seed + 2)
    inscp = rng.integers(1_000, 20_000_000, n)
    pre = rng.integers(0, 200_000, n)
    ful = rng.integers(0, 300_000, n)
    over = rng.integers(0, 50_000, n)
    age = rng.integers(0, 100, n)
    return {
        "medfee_sumamt": (inscp + pre + ful + over).astype(np.int64),
        "fulamt_ownpay_amt": ful.astype(np.int64),
        "overlmt_amt": over.astype(np.int64),
        "preselfpay_amt": pre.astype(np.int64),
        "inscp_scp_amt": inscp.astype(np.int64),
        "region": np.full(n, 440100, dtype=np.int64),
        "insutype": rng.choice([310, 390], n).astype(np.int64),
        "treatment": rng.choice([1, 2, 3], n).astype(np.int64),
        "hosp_lv": rng.integers(1, 4, n).astype(np.int64),
        "date": np.full(n, 20260615, dtype=np.int64),
        "age": age.astype(np.int64),
        "retired": age >= 60,
        "civil_servant": rng.random(n) < 0.1,
        "cross_region": rng.choice([0, 1, 2], n, p=[0.9, 0.07, 0.03]).astype(np.int64),
        "assistance": rng.random(n) < 0.05,
        "acct_used": rng.random(n) < 0.7,
        "acct_balance": rng.integers(0, 500_000, n).astype(np.int64),
        "dedc_paid": rng.integers(0, 200_000, n).astype(np.int64),
        "hifp_paid": rng.integers(0, 10_000_000, n).astype(np.int64),
        "critical_base": rng.integers(0, 5_000_000, n).astype(np.int64),
        "inpatient_count": rng.integers(0, 3, n).astype(np.int64),
    }


def bench_split(args: argparse.Namespace, out: dict[str, Any]) -> None:
    policy = engine_rs.Policy.from_toml(POLICY.read_text(encoding="utf-8"))
    cols = split_columns(args.settlements, args.seed)
    dt = best_of(3, lambda: engine_rs.split_batch(policy, cols))
    out["split_settlements"] = args.settlements
    out["split_s"] = dt
    out["split_per_s"] = args.settlements / dt

    pdoc = json.loads(policy.to_json())
    m = min(args.settlements, 20_000)
    rows = []
    for i in range(m):
        rows.append(
            (
                {
                    k: int(cols[k][i])
                    for k in (
                        "medfee_sumamt",
                        "fulamt_ownpay_amt",
                        "overlmt_amt",
                        "preselfpay_amt",
                        "inscp_scp_amt",
                    )
                },
                twin.Selection(
                    region=440100,
                    insutype=int(cols["insutype"][i]),
                    psn_type=0,
                    treatment=int(cols["treatment"][i]),
                    hosp_lv=int(cols["hosp_lv"][i]),
                    date=20260615,
                ),
                twin.Person(
                    age=int(cols["age"][i]),
                    retired=bool(cols["retired"][i]),
                    civil_servant=bool(cols["civil_servant"][i]),
                    cross_region=int(cols["cross_region"][i]),
                    assistance=bool(cols["assistance"][i]),
                    acct_used=bool(cols["acct_used"][i]),
                    acct_balance=int(cols["acct_balance"][i]),
                ),
                {f: int(cols[f][i]) if f in cols else 0 for f in twin.ACC_FIELDS},
            )
        )

    def run_twin() -> None:
        for s, sel, person, acc in rows:
            twin.split(pdoc, s, sel, person, acc)

    tdt = best_of(1, run_twin)
    out["twin_split_per_s"] = m / tdt


ITEM_KEYS = (
    "code", "name", "spec", "dosage_form", "manufacturer", "kind", "chrgitm_lv",
    "fee_category", "price_cap", "selfpay_prop_bp", "inpatient_only", "sex", "age_min",
    "age_max", "diagnoses", "valid_from", "valid_to",
)  # fmt: skip


def load_child(path: str) -> None:
    """Runs in a fresh process: load a saved catalog, print time and memory as JSON."""
    import gc

    z = np.load(path)
    cols = {k: z[k] for k in z.files}
    base = rss_mb()

    def strs(k: str) -> tuple[Any, Any]:
        return cols[k + ".data"], cols[k + ".offsets"]

    items = cast(
        "engine_rs.CatalogItems",
        {k: strs(k) if k + ".data" in cols else cols[k] for k in ITEM_KEYS},
    )
    maps: engine_rs.CatalogMappings = {"hosp_code": strs("hosp_code"), "ins_code": strs("ins_code")}
    psn = [int(x) for x in cols["psn"]]
    t0 = time.perf_counter()
    cat = engine_rs.Catalog.load(items, maps, version=1, selfpay_psn_types=psn)
    dt = time.perf_counter() - t0
    with_inputs = rss_mb()
    del items, maps, z
    cols.clear()
    gc.collect()
    res = {
        "load_s": dt,
        "rss_inputs_mb": base,
        "rss_with_inputs_mb": with_inputs,
        "rss_after_mb": rss_mb(),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "items": len(cat),
        "mappings": cat.mapping_count,
        "heap_mb": cat.heap_bytes / 2**20,
    }
    print(json.dumps(res))


def bench_load(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from server.demo.synth.catalog import make_catalog

    n = args.load_items
    synth = make_catalog(n, seed=args.seed)
    hosp = numbered_codes("H", n)
    perm = np.random.default_rng(args.seed).permutation(n)
    arrays: dict[str, Any] = {"psn": np.array(synth.selfpay_psn_types, dtype=np.int64)}
    for k, v in synth.items.items():
        if isinstance(v, tuple):
            arrays[k + ".data"], arrays[k + ".offsets"] = v
        else:
            arrays[k] = v
    arrays["hosp_code.data"], arrays["hosp_code.offsets"] = hosp
    arrays["ins_code.data"], arrays["ins_code.offsets"] = take_strings(synth.items["code"], perm)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "catalog.npz")
        np.savez(path, **arrays)
        res = subprocess.run(
            [sys.executable, "-m", "bench.bench_engine", "--load-child", path],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    out.update({f"load_{k}": v for k, v in json.loads(res.stdout).items()})


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--settlements", type=int, default=1_000_000)
    ap.add_argument("--load-items", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument(
        "--only",
        choices=("preprocess", "split", "load"),
        help="run one part only (for iterating; prints the part's figures as JSON)",
    )
    ap.add_argument("--load-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_child:
        load_child(args.load_child)
        return
    if args.quick:
        args.lines, args.items, args.settlements, args.load_items = 50_000, 10_000, 50_000, 20_000
    py = platform.python_version()
    out: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {py}"}
    parts = {args.only} if args.only else {"preprocess", "split", "load"}
    if "preprocess" in parts:
        for per_visit in VISIT_SHAPES:
            shape: dict[str, Any] = {}
            bench_preprocess(args, shape, per_visit)
            out[f"preprocess_{per_visit}_per_visit"] = shape
    if "split" in parts:
        bench_split(args, out)
    if "load" in parts:
        bench_load(args, out)
    if args.only:
        print(json.dumps(out, indent=1))
        return
    out["bench_process_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(render(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


def render(o: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    rows = []
    for per_visit in VISIT_SHAPES:
        p = o[f"preprocess_{per_visit}_per_visit"]
        shape = f"{per_visit:,} lines per visit"
        rows += [
            (
                "Preprocess batch",
                f"{p['preprocess_lines']:,} lines, {shape}, {p['preprocess_items']:,}-item catalog",
                f"{p['preprocess_lines_per_s'] / 1e6:.1f} M lines/s "
                f"({p['preprocess_s'] * 1e3:.0f} ms)",
            ),
            (
                "Twin preprocess, loop only",
                f"{p['twin_sample_lines']:,}-line sample, {shape}, inputs as Python objects",
                f"{p['twin_lines_per_s'] / 1e3:.0f} k lines/s: "
                f"Rust is {p['preprocess_speedup_vs_twin']:.0f}x",
            ),
            (
                "Twin preprocess, same job",
                f"{p['twin_sample_lines']:,}-line sample, {shape}, columns in and out",
                f"{p['twin_columnar_lines_per_s'] / 1e3:.0f} k lines/s: "
                f"Rust is {p['preprocess_speedup_vs_twin_columnar']:.0f}x",
            ),
        ]
    rows += [
        (
            "Fund split batch",
            f"{o['split_settlements']:,} settlements, demo policy",
            f"{o['split_per_s'] / 1e6:.2f} M settlements/s ({o['split_s'] * 1e3:.0f} ms)",
        ),
        (
            "Twin fund split",
            "20,000 settlements",
            f"{o['twin_split_per_s'] / 1e3:.0f} k/s: Rust is "
            f"{o['split_per_s'] / o['twin_split_per_s']:.0f}x",
        ),
        (
            "Catalog load",
            f"{o['load_items']:,} items + {o['load_mappings']:,} mappings",
            f"{o['load_load_s']:.2f} s; RSS {o['load_rss_after_mb']:.0f} MB after load "
            f"(inputs freed), {o['load_rss_with_inputs_mb']:.0f} MB with inputs, "
            f"peak {o['load_peak_mb']:.0f} MB; index {o['load_heap_mb']:.0f} MB",
        ),
    ]
    lines = ["| measure | size | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + f"\n\n{o['machine']}"


if __name__ == "__main__":
    main()
