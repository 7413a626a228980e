"""The labelled evaluation set for catalog matching (tests/data/match_eval.jsonl).

The file's first line records how its catalog is generated (`make_catalog(n, seed)`) and a
fingerprint of that catalog, so a test regenerates the very same catalog from the repo alone
and notices if the generator has drifted; every further line is one hospital item with the
insurance code it truly maps to and the variants it was rendered with.

Regenerate with `python -m server.demo.synth.match_eval tests/data/match_eval.jsonl`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.demo.synth.catalog import SynthCatalog, make_catalog, make_hospital_items

CATALOG_ITEMS = 30_000
CATALOG_SEED = 20_240_601
QUERIES = 600
QUERY_SEED = 11


@dataclass(frozen=True)
class EvalRecord:
    name: str
    spec: str
    dosage_form: str
    manufacturer: str
    code: str  # the insurance code the item truly maps to
    variants: tuple[str, ...]


def fingerprint(cat: SynthCatalog) -> str:
    """SHA-256 over the catalog's code, name, spec, form and maker columns."""
    h = hashlib.sha256()
    for key in ("code", "name", "spec", "dosage_form", "manufacturer"):
        data, offsets = cat.items[key]
        h.update(data.tobytes())
        h.update(offsets.tobytes())
    return h.hexdigest()


def build(
    n_items: int = CATALOG_ITEMS,
    seed: int = CATALOG_SEED,
    queries: int = QUERIES,
    query_seed: int = QUERY_SEED,
) -> tuple[dict[str, Any], list[EvalRecord]]:
    """The header and records of an evaluation set."""
    cat = make_catalog(n_items, seed)
    hosp = make_hospital_items(cat, queries, query_seed)
    header = {
        "catalog": {"n": n_items, "seed": seed},
        "hospital": {"n": queries, "seed": query_seed},
        "fingerprint": fingerprint(cat),
    }
    records = [
        EvalRecord(
            hosp.name[i],
            hosp.spec[i],
            hosp.dosage_form[i],
            hosp.manufacturer[i],
            hosp.true_code[i],
            tuple(sorted(str(v) for v in hosp.variants[i])),
        )
        for i in range(len(hosp))
    ]
    return header, records


def write(path: Path, header: dict[str, Any], records: list[EvalRecord]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        for r in records:
            f.write(json.dumps(r.__dict__, ensure_ascii=False) + "\n")


def load(path: Path) -> tuple[dict[str, Any], list[EvalRecord]]:
    """The header and records of an evaluation file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header: dict[str, Any] = json.loads(lines[0])
    records = []
    for line in lines[1:]:
        d = json.loads(line)
        d["variants"] = tuple(d["variants"])
        records.append(EvalRecord(**d))
    return header, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    args = ap.parse_args()
    header, records = build()
    write(args.path, header, records)
    print(f"wrote {len(records)} records to {args.path}")


if __name__ == "__main__":
    main()
