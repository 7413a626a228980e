"""Specification (规格) pools for the synthetic catalog.

Each spec group (tablets, injections, materials sized by gauge, ...) has a pool of entries
ordered so that neighbours are sibling specs of one product (same strength in other pack
sizes, then the next strength), and a few catalog writing styles. A product family takes a
window of neighbouring entries and one style, so its items differ only by strength or pack,
which is what makes catalog matching hard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from server.demo.synth import vocab

# Strength ladders in mg.
_ORAL_MG: Final[tuple[float, ...]] = (
    5,
    10,
    20,
    25,
    40,
    50,
    100,
    125,
    150,
    200,
    250,
    300,
    500,
    1000,
)
_INJ_MG: Final[tuple[float, ...]] = (2, 5, 10, 20, 40, 50, 100, 200, 250, 500, 1000)
_TABLET_COUNTS: Final[tuple[int, ...]] = (6, 7, 10, 12, 14, 20, 24, 28, 30, 36, 48, 60, 100)


def fmt_num(x: float) -> str:
    """A number as catalogs write it: no trailing zeros (0.25, 1, 12.5)."""
    s = f"{x:.4f}".rstrip("0").rstrip(".")
    return s or "0"


def fmt_mass(mg: float) -> str:
    """Strengths of 100 mg and above in grams (0.25g), smaller ones in mg (50mg)."""
    return f"{fmt_num(mg / 1000)}g" if mg >= 100 else f"{fmt_num(mg)}mg"


def _grid(
    axes: Sequence[Sequence[object]], styles: Sequence[Callable[..., str]]
) -> list[list[str]]:
    """Every combination of the axes (last axis fastest), rendered in every style."""
    combos: list[tuple[object, ...]] = [()]
    for axis in axes:
        combos = [(*c, v) for c in combos for v in axis]
    return [[style(*c) for c in combos] for style in styles]


def _count(c: object, unit: str) -> str:
    return "" if c == 1 else f"×{c}{unit}"


def _build() -> dict[str, list[list[str]]]:
    pools: dict[str, list[list[str]]] = {}
    pools["tablet"] = _grid(
        [_ORAL_MG, _TABLET_COUNTS],
        [
            lambda d, c: f"{fmt_mass(d)}×{c}片",
            lambda d, c: f"{fmt_mass(d)}*{c}片/盒",
            lambda d, c: f"{fmt_mass(d)}x{c}片",
        ],
    )
    pools["capsule"] = _grid(
        [_ORAL_MG, _TABLET_COUNTS],
        [
            lambda d, c: f"{fmt_mass(d)}×{c}粒",
            lambda d, c: f"{fmt_mass(d)}*{c}粒/盒",
            lambda d, c: f"每粒装{fmt_mass(d)}×{c}粒",
        ],
    )
    pools["granule"] = _grid(
        [(1, 2, 3, 4, 5, 6, 8, 10, 12, 15), (6, 9, 10, 12, 18, 20, 24)],
        [
            lambda w, c: f"{w}g×{c}袋",
            lambda w, c: f"{w}g*{c}袋/盒",
            lambda w, c: f"每袋装{w}g×{c}袋",
        ],
    )
    inj = [(v, d) for v in (1, 2, 5, 10, 20) for d in _INJ_MG] + [
        (v, d) for v in (50, 100, 250) for d in (100, 200, 250, 500, 1000, 2000)
    ]
    pools["injection"] = _grid(
        [inj, (1, 5, 10)],
        [
            lambda vd, c: f"{vd[0]}ml:{fmt_mass(vd[1])}{_count(c, '支')}",
            lambda vd, c: f"{vd[0]}ml:{fmt_mass(vd[1])}*{c}支",
        ],
    )
    powders = (
        "40mg",
        "80mg",
        "0.25g",
        "0.5g",
        "0.75g",
        "1.0g",
        "1.5g",
        "2.0g",
        "3.0g",
        "80万单位",
        "160万单位",
        "400万单位",
    )
    pools["powder"] = _grid(
        [powders, (1, 10)],
        [lambda d, c: f"{d}{_count(c, '瓶')}", lambda d, c: f"{d}/瓶" if c == 1 else f"{d}*{c}瓶"],
    )
    liquids = [f"{v}ml×{c}支" for v in (5, 10, 20) for c in (6, 10, 12)] + [
        f"{v}ml" for v in (60, 100, 120, 150, 200, 250)
    ]
    pools["liquid"] = [liquids, [s.replace("×", "*") for s in liquids]]
    pools["eye"] = _grid(
        [(5, 8, 10), (2.5, 5, 10, 15, 25, 50)],
        [lambda v, d: f"{v}ml:{fmt_mass(d)}", lambda v, d: f"{v}ml:{fmt_mass(d)}/支"],
    )
    pools["cream"] = _grid(
        [(10, 15, 20, 30), (10, 50, 100, 200, 300)],
        [lambda w, d: f"{w}g:{fmt_mass(d)}", lambda w, d: f"{w}g:{fmt_mass(d)}/支"],
    )
    pools["spray"] = _grid(
        [(50, 100, 200, 250), (120, 200)],
        [lambda d, c: f"每揿{fmt_num(d)}μg×{c}揿", lambda d, c: f"{fmt_num(d)}μg*{c}揿"],
    )
    pools["pill"] = _grid(
        [(0.04, 0.2, 0.5, 3, 6, 9), (6, 10, 12, 20, 60)],
        [
            lambda w, c: f"{fmt_num(w)}g×{c}袋",
            lambda w, c: f"每丸重{fmt_num(w)}g×{c}丸",
            lambda w, c: f"{fmt_num(w)}g*{c}丸/盒",
        ],
    )
    pools["plaster"] = _grid(
        [("5cm×7cm", "7cm×10cm", "10cm×14cm", "6.5cm×10cm"), (2, 4, 6, 8, 10)],
        [lambda a, c: f"{a}×{c}贴", lambda a, c: f"{a}*{c}贴/盒"],
    )
    pools["material_ml"] = [[f"{v}ml" for v in (1, 2, 2.5, 5, 10, 20, 30, 50, 60, 100)]]
    pools["material_gauge"] = [
        [f"{g}G" for g in (14, 16, 18, 20, 22, 24, 26)] + [f"F{f}" for f in range(6, 26, 2)]
    ]
    pools["material_stent"] = [
        [
            f"φ{fmt_num(d)}mm×{ln}mm"
            for d in (2.25, 2.5, 2.75, 3.0, 3.5, 4.0)
            for ln in (8, 13, 18, 23, 28, 33, 38)
        ]
    ]
    pools["material_suture"] = [
        [f"{s}-0 {ln}cm" for s in (6, 5, 4, 3, 2, 1) for ln in (45, 75, 90)]
    ]
    pools["material_area"] = [
        [
            f"{a}cm×{b}cm"
            for a, b in (
                (5, 5),
                (5, 7),
                (6, 8),
                (7.5, 7.5),
                (8, 10),
                (10, 10),
                (10, 12),
                (10, 20),
                (15, 20),
                (20, 30),
            )
        ]
    ]
    pools["material_model"] = [
        [f"{p}-{n}" for p in ("KD", "WG", "MT", "HD", "YX", "BL") for n in (1, 2, 3, 5, 8, 10, 12)]
    ]
    pools["material_size"] = [["S", "M", "L", "XL", "均码", "6.5号", "7号", "7.5号", "8号"]]
    pools["herbal"] = [list(vocab.HERB_PROCESSING)]
    pools["service"] = [["", "次", "每部位", "每项", "每人次", "每小时", "每日"]]
    for name, styles in pools.items():
        if len({len(s) for s in styles}) != 1:
            raise AssertionError(f"spec pool {name}: styles differ in length")
    return pools


SPEC_POOLS: Final[dict[str, list[list[str]]]] = _build()

# Which sizing a material noun is sold in (by a word in its name), default: models.
MATERIAL_SPEC_GROUP: Final[tuple[tuple[str, str], ...]] = (
    ("注射器", "material_ml"),
    ("采血管", "material_ml"),
    ("引流袋", "material_ml"),
    ("留置针", "material_gauge"),
    ("采血针", "material_gauge"),
    ("导尿管", "material_gauge"),
    ("胃管", "material_gauge"),
    ("吸痰管", "material_gauge"),
    ("插管", "material_gauge"),
    ("导管", "material_gauge"),
    ("引流管", "material_gauge"),
    ("针头", "material_gauge"),
    ("支架", "material_stent"),
    ("球囊", "material_stent"),
    ("缝合线", "material_suture"),
    ("缝合针", "material_suture"),
    ("纱布", "material_area"),
    ("敷贴", "material_area"),
    ("敷料", "material_area"),
    ("绷带", "material_area"),
    ("补片", "material_area"),
    ("口罩", "material_size"),
    ("手套", "material_size"),
    ("手术衣", "material_size"),
)


def material_spec_group(noun: str) -> str:
    """The spec pool a material noun is sold in."""
    for word, group in MATERIAL_SPEC_GROUP:
        if word in noun:
            return group
    return "material_model"
