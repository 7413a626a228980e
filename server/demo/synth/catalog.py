"""Synthetic national insurance catalog (医保目录) and hospital items that map onto it.

`make_catalog(n, seed)` builds the column dict `engine_rs.Catalog.load` takes (layout in
server/columns.py) for n items: western and Chinese patent medicines, herbal pieces,
hospital preparations, medical services and materials, with classes A/B/C, price caps in fen,
pre-self-pay ratios in basis points, restrictions and validity dates. Like a real catalog it
is full of near-duplicates: one generic name in several specs from many manufacturers, and
names one character apart. Items are grouped into product families (one name and dosage
form) built in Python; the per-item columns are expanded from family arrays with numpy, so a
million items take a few seconds.

`make_hospital_items(cat, n, seed)` draws items a hospital would stock and renders their
name, spec, dosage form and manufacturer the way integrators type them (see variants.py);
`HospitalItems.mappings(share)` turns a share of them into the 对照 mapping columns.
Both are deterministic by seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from server.columns import StrColumn, pack_strings
from server.demo.synth import specs, vocab
from server.demo.synth.variants import Variant, VariantMix, render

if TYPE_CHECKING:
    import engine_rs

# Kind shares of a merged catalog (western, patent, herbal, hospital prep, service, material).
KIND_SHARES: tuple[float, ...] = (0.42, 0.16, 0.04, 0.02, 0.06, 0.30)
# Mean items per product family, by kind.
_MEAN_FAMILY: tuple[float, ...] = (10.0, 8.0, 12.0, 2.0, 1.5, 12.0)
# Class A/B/C shares by kind.
_CLASS_P: tuple[tuple[float, float, float], ...] = (
    (0.30, 0.60, 0.10),
    (0.25, 0.65, 0.10),
    (0.20, 0.70, 0.10),
    (0.00, 0.70, 0.30),
    (0.60, 0.30, 0.10),
    (0.10, 0.70, 0.20),
)
# Median price cap in fen by kind, and the share of items with a cap.
_PRICE_MEDIAN: tuple[int, ...] = (3_000, 4_000, 60, 1_500, 8_000, 20_000)
_PRICE_SHARE: tuple[float, ...] = (0.6, 0.6, 0.9, 0.5, 1.0, 0.5)
# Diagnosis limits (ICD-10 prefixes) some class B drugs carry, by ATC prefix.
_DIAGNOSES: tuple[tuple[str, str], ...] = (
    ("A02B", "K21,K25,K26,K27"),
    ("A10", "E10,E11"),
    ("C07", "I10,I11,I20"),
    ("C08", "I10,I11"),
    ("C09", "I10,I11,I50"),
    ("C10", "E78,I25"),
    ("J02", "B37,B44"),
    ("L01", "C16,C34,C50,C92"),
    ("N05", "F20,F31,G47"),
    ("N06", "F32,F33"),
    ("B01", "I21,I63"),
)
SELFPAY_PSN_TYPES: list[int] = [11, 12]  # 在职职工, 退休人员: column 2 gets a lower ratio
# The string columns of `SynthCatalog.items`.
StrKey = Literal["code", "name", "spec", "dosage_form", "manufacturer", "diagnoses"]


@dataclass
class SynthCatalog:
    """A generated catalog: the `Catalog.load` columns plus what tests and demos need."""

    items: engine_rs.CatalogItems
    selfpay_psn_types: list[int]
    seed: int
    family: npt.NDArray[np.int32]  # product family of each item (same name and form)
    _cache: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.items["kind"])

    def column(self, key: StrKey) -> list[str]:
        """A string column decoded to Python strings (cached; fine up to ~1e6 items)."""
        if key not in self._cache:
            data, offsets = self.items[key]
            raw = data.tobytes()
            self._cache[key] = [
                raw[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)
            ]
        return self._cache[key]

    def item(self, i: int) -> dict[str, str]:
        """Name, spec, dosage form, manufacturer and code of item i."""
        out: dict[str, str] = {}
        for key in ("code", "name", "spec", "dosage_form", "manufacturer"):
            data, offsets = self.items[key]
            out[key] = data[offsets[i] : offsets[i + 1]].tobytes().decode("utf-8")
        return out


@dataclass
class _Families:
    """Product families of one kind; lists and arrays are per family."""

    kind: int
    names: list[str]
    forms: list[str]  # dosage_form column
    spec_groups: list[str]
    mfr_pool: str
    code_heads: list[str]  # fixed-width ASCII per kind
    fee_category: list[int]
    atc: list[str] = field(default_factory=list)
    sex: list[int] = field(default_factory=list)
    age_min: list[int] = field(default_factory=list)
    age_max: list[int] = field(default_factory=list)
    inpatient: list[bool] = field(default_factory=list)


def _unique_names(
    rng: np.random.Generator, want: int, draw: Any, max_rounds: int = 40
) -> list[tuple[str, ...]]:
    """Up to `want` distinct tuples from `draw(rng, size)`, in draw order."""
    seen: dict[tuple[str, ...], None] = {}
    for _ in range(max_rounds):
        for t in draw(rng, max(64, want - len(seen)) * 2):
            seen.setdefault(t, None)
            if len(seen) == want:
                return list(seen)
    return list(seen)


def _western(rng: np.random.Generator, want: int) -> _Families:
    real = len(vocab.WESTERN_STEMS)
    syl = vocab.SYLLABLES
    ends = vocab.CLASS_ENDINGS

    def draw(r: np.random.Generator, size: int) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        use_real = r.random(size) < 0.35
        ri = r.integers(0, real, size)
        s1 = r.integers(0, len(syl), size)
        s2 = r.integers(-len(syl), len(syl), size)  # negative: one syllable only
        ei = r.integers(0, len(ends), size)
        fi = r.integers(0, len(vocab.WESTERN_FORMS), size)
        salt = r.random(size)
        sp = r.integers(0, len(vocab.SALT_PREFIXES), size)
        ss = r.integers(0, len(vocab.SALT_SUFFIXES), size)
        for j in range(size):
            if use_real[j]:
                stem, atc = vocab.WESTERN_STEMS[ri[j]]
            else:
                second = syl[s2[j]] if s2[j] >= 0 else ""
                stem = syl[s1[j]] + second + ends[ei[j]][0]
                atc = ends[ei[j]][1]
            suffix, form, group = vocab.WESTERN_FORMS[fi[j]]
            prefix = ""
            if salt[j] < 0.25:
                prefix = vocab.SALT_PREFIXES[sp[j]]
            elif salt[j] < 0.35 and group in ("injection", "powder"):
                stem += vocab.SALT_SUFFIXES[ss[j]]
            if suffix == "注射用":
                name = "注射用" + prefix + stem
            else:
                name = prefix + stem + suffix
            out.append((name, form, group, atc))
        return out

    fams = _unique_names(rng, want, draw)
    f = _Families(
        1,
        [t[0] for t in fams],
        [t[1] for t in fams],
        [t[2] for t in fams],
        "drug",
        [],
        [9] * len(fams),
        atc=[t[3] for t in fams],
    )
    form_no = {s: i for i, s in enumerate(sorted({t[1] for t in fams}))}
    f.code_heads = [f"X{t[3]}A{form_no[t[1]]:03d}" for t in fams]
    for name, _, group, atc in fams:
        f.sex.append(1 if atc.startswith("G04") else 0)
        f.age_min.append(18 if "沙星" in name else 0)
        f.age_max.append(255)
        f.inpatient.append(group == "powder" and atc.startswith(("J01DH", "J01XA")))
    return f


def _patent(rng: np.random.Generator, want: int) -> _Families:
    stems = vocab.CPM_STEMS
    herbs = vocab.HERBS

    def draw(r: np.random.Generator, size: int) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        real = r.random(size) < 0.3
        si = r.integers(0, len(stems), size)
        mi = r.integers(0, len(vocab.CPM_MODIFIERS), size)
        h1 = r.integers(0, len(herbs), size)
        h2 = r.integers(0, len(herbs), size)
        fn = r.integers(0, len(vocab.CPM_FUNCTIONS), size)
        fi = r.integers(0, len(vocab.CPM_FORMS), size)
        for j in range(size):
            if real[j]:
                stem = stems[si[j]]
            else:
                stem = (
                    vocab.CPM_MODIFIERS[mi[j]]
                    + herbs[h1[j]][0]
                    + herbs[h2[j]][0]
                    + vocab.CPM_FUNCTIONS[fn[j]]
                )
            suffix, form, group = vocab.CPM_FORMS[fi[j]]
            out.append((stem + suffix, form, group))
        return out

    fams = _unique_names(rng, want, draw)
    cls = rng.integers(0, 26, (len(fams), 2))
    heads = [f"ZA{c[0] % 20 + 1:02d}{chr(65 + c[1] % 26)}{chr(65 + c[0] % 26)}B" for c in cls]
    form_no = {s: i for i, s in enumerate(sorted({t[1] for t in fams}))}
    f = _Families(
        2,
        [t[0] for t in fams],
        [t[1] for t in fams],
        [t[2] for t in fams],
        "drug",
        [h + f"{form_no[t[1]]:03d}" for h, t in zip(heads, fams, strict=True)],
        [11] * len(fams),
    )
    for name, _, _ in fams:
        f.sex.append(2 if any(w in name for w in ("妇科", "乌鸡白凤", "益母草")) else 0)
        f.age_min.append(0)
        f.age_max.append(14 if name.startswith("小儿") else 255)
        f.inpatient.append(False)
    return f


def _herbal(rng: np.random.Generator, want: int) -> _Families:
    names = list(dict.fromkeys(o + h for h in vocab.HERBS for o in vocab.HERB_ORIGINS))
    order = rng.permutation(len(names))[: max(1, min(want, len(names)))]
    chosen = [names[i] for i in sorted(order)]
    n = len(chosen)
    f = _Families(
        3, chosen, ["饮片"] * n, ["herbal"] * n, "herbal", [f"T{i:05d}" for i in range(n)], [10] * n
    )
    f.sex, f.age_min, f.age_max, f.inpatient = [0] * n, [0] * n, [255] * n, [False] * n
    return f


def _hospital_prep(rng: np.random.Generator, want: int) -> _Families:
    combos = [
        (s + fs, fm, g)
        for s in vocab.HOSPITAL_PREP_STEMS
        for fs, fm, g in vocab.HOSPITAL_PREP_FORMS
    ]
    order = sorted(rng.permutation(len(combos))[: max(1, min(want, len(combos)))])
    fams = [combos[i] for i in order]
    n = len(fams)
    f = _Families(
        4,
        [t[0] for t in fams],
        [t[1] for t in fams],
        [t[2] for t in fams],
        "hospital",
        [f"H{rng.integers(110000, 660000)}" for _ in range(n)],
        [9] * n,
    )
    f.sex, f.age_min, f.age_max, f.inpatient = [0] * n, [0] * n, [255] * n, [False] * n
    return f


def _service(rng: np.random.Generator, want: int) -> _Families:
    base: list[tuple[str, int]] = []  # (name, fee category)
    for part in vocab.BODY_PARTS:
        for mod in vocab.MODALITIES:
            for tech in vocab.TECHNIQUES:
                base.append((part + mod + tech, 3))
    for test in vocab.LAB_TESTS:
        for spc in vocab.SPECIMENS:
            for method in vocab.LAB_METHODS:
                base.append((spc + test + method, 4))
    for proc in vocab.PROCEDURES:
        cat = 6 if proc.endswith("术") else 7 if "护理" in proc else 1 if "床位" in proc else 5
        base.append((proc, cat))
    combos = list(dict.fromkeys((b + q, c) for b, c in base for q in vocab.SERVICE_QUALIFIERS))
    order = sorted(rng.permutation(len(combos))[: max(1, min(want, len(combos)))])
    fams = [combos[i] for i in order]
    n = len(fams)
    f = _Families(
        5,
        [t[0] for t in fams],
        [""] * n,
        ["service"] * n,
        "none",
        [f"00{t[1]:02d}" for t in fams],
        [t[1] for t in fams],
    )
    for name, _ in fams:
        f.sex.append(1 if "前列腺" in name else 2 if ("剖宫产" in name or "子宫" in name) else 0)
        f.age_min.append(0)
        f.age_max.append(14 if "(儿童)" in name else 255)
        f.inpatient.append("(术中)" in name or name.startswith(("重症", "普通病房")))
    return f


def _material(rng: np.random.Generator, want: int) -> _Families:
    def draw(r: np.random.Generator, size: int) -> list[tuple[str, ...]]:
        p = r.integers(0, len(vocab.MATERIAL_PREFIXES), size)
        ft = r.integers(0, len(vocab.MATERIAL_FEATURES), size)
        nn = r.integers(0, len(vocab.MATERIAL_NOUNS), size)
        ty = r.integers(0, len(vocab.MATERIAL_TYPES), size)
        return [
            (
                vocab.MATERIAL_PREFIXES[p[j]]
                + vocab.MATERIAL_FEATURES[ft[j]]
                + vocab.MATERIAL_NOUNS[nn[j]]
                + vocab.MATERIAL_TYPES[ty[j]],
                str(nn[j]),
            )
            for j in range(size)
        ]

    fams = _unique_names(rng, want, draw)
    n = len(fams)
    nouns = [vocab.MATERIAL_NOUNS[int(t[1])] for t in fams]
    f = _Families(
        6,
        [t[0] for t in fams],
        [""] * n,
        [specs.material_spec_group(x) for x in nouns],
        "material",
        [f"C{int(t[1]) // 10 + 1:02d}{int(t[1]) % 10 + 1:02d}01" for t in fams],
        [8] * n,
    )
    implants = ("支架", "假体", "起搏器", "髓内钉", "接骨板", "螺钉", "人工晶状体", "骨水泥")
    f.sex, f.age_min, f.age_max = [0] * n, [0] * n, [255] * n
    f.inpatient = [any(w in x for w in implants) for x in nouns]
    return f


def _manufacturers(rng: np.random.Generator) -> dict[str, list[str]]:
    """Manufacturer pools: drug makers, herbal piece makers, material makers, hospitals."""
    brands = vocab.BRAND_CHARS
    provs = vocab.PROVINCES

    def pool(trades: tuple[str, ...], size: int, real: tuple[str, ...]) -> list[str]:
        out = dict.fromkeys(real)
        while len(out) < size:
            m = 4 * size
            pv = rng.integers(0, len(provs), m)
            b1 = rng.integers(0, len(brands), m)
            b2 = rng.integers(0, len(brands), m)
            tr = rng.integers(0, len(trades), m)
            lg = rng.integers(0, len(vocab.LEGAL_FORMS), m)
            shape = rng.random(m)
            for j in range(m):
                brand = brands[b1[j]] + brands[b2[j]]
                if b1[j] == b2[j]:
                    continue
                if shape[j] < 0.7:  # 浙江华海药业股份有限公司
                    name = provs[pv[j]] + brand + trades[tr[j]] + vocab.LEGAL_FORMS[lg[j]]
                elif shape[j] < 0.9:  # 华海药业股份有限公司
                    name = brand + trades[tr[j]] + vocab.LEGAL_FORMS[lg[j]]
                else:  # 华海制药(上海)有限公司
                    name = brand + trades[tr[j]] + f"({provs[pv[j]]})有限公司"
                name = name.replace("厂有限", "有限").replace("厂集团", "集团")
                name = name.replace("集团集团", "集团")
                out.setdefault(name, None)
                if len(out) == size:
                    break
        names = list(out)
        order = rng.permutation(len(names))
        return [names[i] for i in order]

    return {
        "drug": pool(vocab.DRUG_TRADES, 2500, vocab.REAL_DRUG_MAKERS),
        "herbal": pool(vocab.HERB_TRADES, 400, ()),
        "material": pool(vocab.MATERIAL_TRADES, 1500, ()),
        "hospital": [p + h for p in provs[:12] for h in vocab.HOSPITALS],
        "none": [""],
    }


def _family_sizes(rng: np.random.Generator, total: int, n_fam: int) -> npt.NDArray[np.int64]:
    """Items per family: at least one each, the rest spread with a heavy tail."""
    if total <= n_fam:
        return np.ones(total, dtype=np.int64)
    weights = rng.lognormal(0.0, 0.8, n_fam)
    extra = rng.multinomial(total - n_fam, weights / weights.sum())
    return np.asarray(extra + 1, dtype=np.int64)


def _gather(col: StrColumn, idx: npt.NDArray[np.int64], chunk: int = 1 << 17) -> StrColumn:
    """Rows `idx` of a string column, vectorised in chunks to bound temporaries."""
    data, offs = col
    starts = offs[idx]
    lens = offs[idx + 1] - starts
    new_offs = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lens, out=new_offs[1:])
    out = np.empty(int(new_offs[-1]), dtype=np.uint8)
    for a in range(0, len(idx), chunk):
        b = min(a + chunk, len(idx))
        lo, hi = int(new_offs[a]), int(new_offs[b])
        shift = np.repeat(starts[a:b] - new_offs[a:b], lens[a:b])
        out[lo:hi] = data[shift + np.arange(lo, hi)]
    return out, new_offs


def _digits(x: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint8]:
    """Zero-padded decimal digits of x as an (n, width) ASCII array."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((x[:, None] // powers[None, :]) % 10 + 48).astype(np.uint8)


def _codes(
    heads: list[str], fam: npt.NDArray[np.int64], mfr: npt.NDArray[np.int64], serial_width: int
) -> tuple[npt.NDArray[np.uint8], int]:
    """Fixed-width codes: family head + manufacturer number + serial within the kind."""
    head = np.frombuffer("".join(heads).encode("ascii"), dtype=np.uint8)
    hw = len(heads[0]) if heads else 0
    head = head.reshape(len(heads), hw)[fam]
    serial = np.arange(len(fam), dtype=np.int64)
    parts = [head, _digits(mfr % 100_000, 5), _digits(serial, serial_width)]
    arr = np.hstack(parts)
    return arr.ravel(), arr.shape[1]


def make_catalog(n: int, seed: int = 0) -> SynthCatalog:
    """A catalog of exactly n items, deterministic by seed (n up to a few million)."""
    if n < 1:
        raise ValueError("n must be positive")
    rng = np.random.default_rng(seed)
    per_kind = np.floor(np.asarray(KIND_SHARES) * n).astype(np.int64)
    per_kind[0] += n - int(per_kind.sum())
    makers = _manufacturers(rng)
    builders = (_western, _patent, _herbal, _hospital_prep, _service, _material)

    # Spec pools flattened into one table: group -> (base, styles, entries).
    spec_table: list[str] = []
    pool_at: dict[str, tuple[int, int, int]] = {}
    for g, styles in specs.SPEC_POOLS.items():
        pool_at[g] = (len(spec_table), len(styles), len(styles[0]))
        for s in styles:
            spec_table.extend(s)
    mfr_table: list[str] = []
    mfr_at: dict[str, tuple[int, int]] = {}
    for p, names in makers.items():
        mfr_at[p] = (len(mfr_table), len(names))
        mfr_table.extend(names)

    name_table: list[str] = []
    form_table: list[str] = []
    diag_table: list[str] = [""] + [d for _, d in _DIAGNOSES]
    cols: dict[str, list[npt.NDArray[Any]]] = {
        k: []
        for k in (
            "name_id",
            "form_id",
            "spec_id",
            "mfr_id",
            "kind",
            "lv",
            "fee",
            "sex",
            "age_min",
            "age_max",
            "inpatient",
            "diag",
            "fam",
        )
    }
    code_parts: list[tuple[npt.NDArray[np.uint8], int, int]] = []
    fam_base = 0
    for k, want in enumerate(per_kind):
        if want == 0:
            continue
        fams = builders[k](rng, max(1, round(int(want) / _MEAN_FAMILY[k])))
        nf = len(fams.names)
        groups = fams.spec_groups
        base = np.array([pool_at[g][0] for g in groups], dtype=np.int64)
        n_styles = np.array([pool_at[g][1] for g in groups], dtype=np.int64)
        n_entries = np.array([pool_at[g][2] for g in groups], dtype=np.int64)
        mbase, msize = mfr_at[fams.mfr_pool]
        # Specs per family: a window of sibling entries; the rest of the variety is makers.
        n_spec = np.minimum(n_entries, 1 + rng.binomial(5, 0.4, nf))
        sizes = _family_sizes(rng, int(want), nf)
        sizes = np.minimum(sizes, n_spec * msize)
        short = int(want) - int(sizes.sum())
        while short > 0:  # capped families hand their surplus to others with room
            room = n_spec * msize - sizes
            j = int(np.argmax(room))
            add = min(short, int(room[j]))
            if add <= 0:
                raise ValueError(f"kind {k + 1}: catalog space too small for {want} items")
            sizes[j] += add
            short -= add
        start = (rng.random(nf) * (n_entries - n_spec + 1)).astype(np.int64)
        style = (rng.random(nf) * n_styles).astype(np.int64)
        m0 = rng.integers(0, msize, nf)
        fam = np.repeat(np.arange(nf, dtype=np.int64), sizes)
        rank = np.arange(len(fam), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        spec_id = (base + style * n_entries + start)[fam] + rank % n_spec[fam]
        mfr_id = mbase + (m0[fam] + rank // n_spec[fam]) % msize
        m = len(fam)

        name_ids = len(name_table) + np.arange(nf, dtype=np.int64)
        name_table.extend(fams.names)
        form_idx = {f: i for i, f in enumerate(form_table)}
        for f in fams.forms:
            if f not in form_idx:
                form_idx[f] = len(form_table)
                form_table.append(f)
        form_ids = np.array([form_idx[f] for f in fams.forms], dtype=np.int64)

        lv = rng.choice(np.array([1, 2, 3], dtype=np.uint8), nf, p=np.asarray(_CLASS_P[k]))
        diag = np.zeros(nf, dtype=np.int64)
        if fams.atc:
            limited = (lv == 2) & (rng.random(nf) < 0.3)
            for fj in np.flatnonzero(limited).tolist():
                for di, (prefix, _) in enumerate(_DIAGNOSES):
                    if fams.atc[fj].startswith(prefix):
                        diag[fj] = di + 1
        cols["name_id"].append(name_ids[fam])
        cols["form_id"].append(form_ids[fam])
        cols["spec_id"].append(spec_id)
        cols["mfr_id"].append(mfr_id)
        cols["kind"].append(np.full(m, k + 1, dtype=np.uint8))
        cols["lv"].append(lv[fam])
        cols["fee"].append(np.asarray(fams.fee_category, dtype=np.uint8)[fam])
        cols["sex"].append(np.asarray(fams.sex, dtype=np.uint8)[fam])
        cols["age_min"].append(np.asarray(fams.age_min, dtype=np.uint8)[fam])
        cols["age_max"].append(np.asarray(fams.age_max, dtype=np.uint8)[fam])
        cols["inpatient"].append(np.asarray(fams.inpatient, dtype=bool)[fam])
        cols["diag"].append(diag[fam])
        cols["fam"].append(fam + fam_base)
        fam_base += nf
        serial_width = 23 - len(fams.code_heads[0]) - 5 if k < 2 else 8
        code_parts.append((*_codes(fams.code_heads, fam, mfr_id - mbase, serial_width), m))

    cat = {key: np.concatenate(v) for key, v in cols.items()}
    kind = cat["kind"]
    lv = cat["lv"]

    # Codes: concatenated fixed-width blocks (each kind has its own width).
    code_data = np.concatenate([c[0] for c in code_parts])
    code_offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(
        np.concatenate([np.full(c[2], c[1], dtype=np.int64) for c in code_parts]), out=code_offs[1:]
    )

    # Price caps: lognormal around the kind's median, some items without a cap.
    kidx = kind.astype(np.int64) - 1
    med = np.asarray(_PRICE_MEDIAN, dtype=np.float64)[kidx]
    price = np.round(med * rng.lognormal(0.0, 0.9, n)).astype(np.int64) + 1
    price[rng.random(n) >= np.asarray(_PRICE_SHARE)[kidx]] = 0

    # Pre-self-pay ratios: class A none, class B drugs 5-20 %, materials 10-30 %; retirees
    # (column 2) pay half of it.
    sp = np.zeros((n, 1 + len(SELFPAY_PSN_TYPES)), dtype=np.int32)
    is_b = lv == 2
    drug = kind <= 4
    sp[is_b & drug, 0] = rng.choice([500, 1000, 1500, 2000], int((is_b & drug).sum()))
    mat_b = (kind == 6) & (lv != 1)
    sp[mat_b, 0] = rng.choice([1000, 1500, 2000, 2500, 3000], int(mat_b.sum()))
    sp[:, 1] = sp[:, 0]
    sp[:, 2] = (sp[:, 0] // 200) * 100

    # Validity: listed since 2019-2025; a few delisted.
    year = rng.integers(2019, 2026, n)
    valid_from = (year * 10_000 + rng.integers(1, 13, n) * 100 + 1).astype(np.int32)
    valid_to = np.zeros(n, dtype=np.int32)
    gone = rng.random(n) < 0.03
    valid_to[gone] = (
        (year[gone] + 1 + rng.integers(0, 3, int(gone.sum()))) * 10_000 + 1231
    ).astype(np.int32)

    spec_col = pack_strings(spec_table)
    items: engine_rs.CatalogItems = {
        "code": (code_data, code_offs),
        "name": _gather(pack_strings(name_table), cat["name_id"]),
        "spec": _gather(spec_col, cat["spec_id"]),
        "dosage_form": _gather(pack_strings(form_table), cat["form_id"]),
        "manufacturer": _gather(pack_strings(mfr_table), cat["mfr_id"]),
        "kind": kind,
        "chrgitm_lv": lv,
        "fee_category": cat["fee"],
        "price_cap": price,
        "selfpay_prop_bp": sp,
        "inpatient_only": cat["inpatient"],
        "sex": cat["sex"],
        "age_min": cat["age_min"],
        "age_max": cat["age_max"],
        "diagnoses": _gather(pack_strings(diag_table), cat["diag"]),
        "valid_from": valid_from,
        "valid_to": valid_to,
    }
    return SynthCatalog(items, list(SELFPAY_PSN_TYPES), seed, cat["fam"].astype(np.int32))


@dataclass
class HospitalItems:
    """Hospital items (院内项目) with the insurance item each one truly is."""

    hosp_code: list[str]
    name: list[str]
    spec: list[str]
    dosage_form: list[str]
    manufacturer: list[str]
    true_code: list[str]  # the insurance code it maps to
    true_index: npt.NDArray[np.int64]  # its row in the catalog
    variants: list[frozenset[Variant]]  # how each was rendered

    def __len__(self) -> int:
        return len(self.hosp_code)

    def columns(self) -> dict[str, StrColumn]:
        """name, spec, dosage_form, manufacturer as string columns (for Matcher.match_many)."""
        return {
            "name": pack_strings(self.name),
            "spec": pack_strings(self.spec),
            "dosage_form": pack_strings(self.dosage_form),
            "manufacturer": pack_strings(self.manufacturer),
        }

    def mapped(self, share: float, seed: int = 0) -> npt.NDArray[np.bool_]:
        """Which items are mapped when a `share` of them is (deterministic by seed)."""
        rng = np.random.default_rng(seed)
        return np.asarray(rng.random(len(self)) < share)

    def mappings(self, share: float, seed: int = 0) -> engine_rs.CatalogMappings:
        """The 对照 columns `{"hosp_code", "ins_code"}` for a `share` of the items; the rest
        stay unmapped (the ones `mapped(share, seed)` marks False)."""
        keep = np.flatnonzero(self.mapped(share, seed))
        return {
            "hosp_code": pack_strings([self.hosp_code[i] for i in keep]),
            "ins_code": pack_strings([self.true_code[i] for i in keep]),
        }


def make_hospital_items(
    cat: SynthCatalog,
    n: int,
    seed: int,
    *,
    mix: VariantMix | None = None,
    kinds: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
    replace: bool = False,
) -> HospitalItems:
    """n hospital items drawn from the catalog (items of `kinds`, each at most once unless
    `replace`), rendered with the variants integrators meet (`mix`, default VariantMix())."""
    rng = np.random.default_rng(seed)
    mix = mix or VariantMix()
    allowed = np.flatnonzero(np.isin(cat.items["kind"], np.asarray(kinds, dtype=np.uint8)))
    if not replace and n > len(allowed):
        raise ValueError(f"only {len(allowed)} catalog items of kinds {kinds}")
    chosen = np.sort(rng.choice(allowed, n, replace=replace)).astype(np.int64)
    chosen = chosen[rng.permutation(n)]
    out = HospitalItems([], [], [], [], [], [], chosen, [])
    width = max(6, math.ceil(math.log10(n + 1)) + 1)
    for j, i in enumerate(chosen):
        it = cat.item(int(i))
        kind = int(cat.items["kind"][i])
        r = render(it, kind, mix, rng)
        out.hosp_code.append(f"H{seed % 1000:03d}{j:0{width}d}")
        out.name.append(r.name)
        out.spec.append(r.spec)
        out.dosage_form.append(r.dosage_form)
        out.manufacturer.append(r.manufacturer)
        out.true_code.append(it["code"])
        out.variants.append(r.variants)
    return out
