"""How integrators type a catalog item into a hospital system (院内目录), as string variants.

`render(item, kind, mix, rng)` takes an insurance item's name, spec, dosage form and
manufacturer and returns them as a hospital would hold them: full-width characters, stray
spaces and punctuation, other unit spellings (`0.25g×24粒` / `0.25g*24` / `250毫克x24粒`),
the spec put into the name (`阿莫西林胶囊(0.25g×24)`), dosage-form synonyms (`片剂`), the
form or a salt left out of the name, abbreviated or missing manufacturers, notes such as
`(集采)`, and pinyin initials (`AMXLJN`). `VariantMix` sets how often each happens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from server.demo.synth import vocab
from server.demo.synth._initials import INITIALS


class Variant(StrEnum):
    """One way a rendered item differs from the catalog."""

    FULL_WIDTH = "full_width"  # ASCII letters, digits, brackets typed full-width
    SPACING = "spacing"  # spaces or punctuation inside the name
    UNIT_SPELLING = "unit_spelling"  # ×/*/x, 克/g, 毫克/mg, 0.25g/250mg, dropped units
    SPEC_IN_NAME = "spec_in_name"  # spec appended to the name, in brackets or after a space
    FORM_SYNONYM = "form_synonym"  # 片剂 for 片, 胶囊剂 for 胶囊, 冲剂 for 颗粒
    FORM_DROPPED = "form_dropped"  # dosage form left out of the name (kept in its field)
    SALT_DROPPED = "salt_dropped"  # 二甲双胍片 for 盐酸二甲双胍片
    NAME_NOTE = "name_note"  # (集采), (进口), [甲] after the name
    PINYIN = "pinyin"  # the name typed as pinyin initials
    MFR_ABBREV = "mfr_abbrev"  # 华北制药 for 华北制药股份有限公司
    MFR_MISSING = "mfr_missing"
    SPEC_MISSING = "spec_missing"
    FORM_FIELD = "form_field"  # dosage form field empty or a synonym


@dataclass(frozen=True)
class VariantMix:
    """Probability of each variant per item (independent draws)."""

    full_width: float = 0.08
    spacing: float = 0.10
    unit_spelling: float = 0.45
    spec_in_name: float = 0.14
    form_synonym: float = 0.15
    form_dropped: float = 0.06
    salt_dropped: float = 0.35  # of names that carry a salt
    name_note: float = 0.06
    pinyin: float = 0.05
    mfr_abbrev: float = 0.35
    mfr_missing: float = 0.06
    spec_missing: float = 0.03
    form_field: float = 0.40

    @staticmethod
    def none() -> VariantMix:
        """Every item exactly as in the catalog."""
        return VariantMix(*([0.0] * 13))


@dataclass(frozen=True)
class Rendered:
    name: str
    spec: str
    dosage_form: str
    manufacturer: str
    variants: frozenset[Variant]


# Name suffix -> what hospitals also write.
_FORM_SYNONYMS: dict[str, tuple[str, ...]] = {
    "片": ("片剂",),
    "胶囊": ("胶囊剂",),
    "软胶囊": ("软胶囊剂",),
    "颗粒": ("颗粒剂", "冲剂"),
    "注射液": ("注射剂", "针"),
    "丸": ("丸剂",),
    "滴丸": ("滴丸剂",),
    "口服液": ("口服溶液",),
    "糖浆": ("糖浆剂",),
    "乳膏": ("乳膏剂", "软膏"),
    "滴眼液": ("滴眼剂", "眼药水"),
    "合剂": ("合剂",),
    "贴膏": ("贴剂",),
    "肠溶片": ("肠溶片剂",),
}
# dosage_form column -> what hospitals write in their field.
_FIELD_SYNONYMS: dict[str, tuple[str, ...]] = {
    "片剂": ("片", "片剂", "素片"),
    "胶囊剂": ("胶囊", "胶囊剂", "硬胶囊"),
    "颗粒剂": ("颗粒", "冲剂"),
    "注射剂": ("注射液", "针剂", "粉针剂"),
    "丸剂": ("丸", "水丸"),
    "口服溶液剂": ("口服液", "溶液剂"),
    "乳膏剂": ("乳膏", "软膏"),
    "滴眼剂": ("滴眼液",),
    "合剂": ("口服液", "合剂"),
    "糖浆剂": ("糖浆",),
    "滴丸剂": ("滴丸",),
    "饮片": ("中药饮片", "饮片", ""),
}
_NAME_FORMS = sorted(
    {
        f
        for f, _, _ in vocab.WESTERN_FORMS + vocab.CPM_FORMS + vocab.HOSPITAL_PREP_FORMS
        if f != "注射用"
    },
    key=len,
    reverse=True,
)
_NOTES = ("(集采)", "(进口)", "(国产)", "(基)", "[甲]", "[乙]", "(医保)", "（OTC）")
_LEGAL = (
    "集团股份有限公司",
    "集团有限公司",
    "股份有限公司",
    "有限责任公司",
    "有限公司",
    "总厂",
    "公司",
)


def initials(name: str) -> str:
    """Pinyin initials of a name as integrators type them: letters and digits kept as is."""
    out = []
    for ch in name:
        if ch.isascii():
            if ch.isalnum():
                out.append(ch.lower())
        elif ch in INITIALS:
            out.append(INITIALS[ch])
    return "".join(out)


def full_width(s: str, rng: np.random.Generator) -> str:
    """ASCII turned full-width (some or all), as IMEs in full-width mode type it."""
    all_of_it = rng.random() < 0.5
    return "".join(
        chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and (all_of_it or rng.random() < 0.5) else c
        for c in s
    )


def _mass_to_other(m: re.Match[str], rng: np.random.Generator) -> str:
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit == "g" and value < 1 and rng.random() < 0.4:
        mg = value * 1000
        return f"{mg:g}mg" if rng.random() < 0.6 else f"{mg:g}毫克"
    if unit == "mg" and value >= 100 and rng.random() < 0.3:
        return f"{value / 1000:g}g"
    return m.group(0)


def respell_spec(spec: str, rng: np.random.Generator) -> str:
    """The same spec in another hand: separators, unit words, mg/g, dropped pack words."""
    s = spec
    s = re.sub(r"(\d+(?:\.\d+)?)(mg|g)(?![a-z])", lambda m: _mass_to_other(m, rng), s)
    sep = str(rng.choice(["*", "x", "X", "×", "＊", "*"]))
    s = s.replace("×", sep) if "×" in s else s.replace("*", sep)
    if rng.random() < 0.3:
        s = s.replace("mg", "毫克").replace("ml", "毫升")
        s = re.sub(r"(?<![a-z毫微μ])g(?![a-z])", "克", s)
    elif rng.random() < 0.2:
        s = s.replace("ml", "mL").replace("mg", "MG")
    if rng.random() < 0.4:
        s = re.sub(r"/(盒|板|瓶|支)$", "", s)
    elif rng.random() < 0.2 and "/" not in s:
        s += "/盒"
    if rng.random() < 0.3:  # 24粒 -> 24
        s = re.sub(r"(\d)(粒|片|袋|支)$", r"\1", s)
    if s.startswith("每") and rng.random() < 0.5:
        s = re.sub(r"^每[粒袋片丸]装?重?", "", s)
    return s


def abbreviate_maker(maker: str, rng: np.random.Generator) -> str:
    """华北制药股份有限公司 -> 华北制药 / 华北 ; 浙江华海药业 -> 华海药业."""
    s = re.sub(r"[(（][^)）]*[)）]", "", maker)
    for legal in _LEGAL:
        if s.endswith(legal):
            s = s[: -len(legal)]
            break
    if rng.random() < 0.4 and not s.endswith("院"):  # a hospital needs its city
        for p in sorted(vocab.PROVINCES, key=len, reverse=True):
            if s.startswith(p) and len(s) > len(p) + 1:
                s = s[len(p) :]
                break
    if rng.random() < 0.2:
        s = s.replace("集团", "")
    return s or maker


def _strip_form(name: str) -> tuple[str, str]:
    """(name without its form suffix, the suffix), or (name, "")."""
    for f in _NAME_FORMS:
        if name.endswith(f) and len(name) > len(f) + 1:
            return name[: -len(f)], f
    return name, ""


def render(item: dict[str, str], kind: int, mix: VariantMix, rng: np.random.Generator) -> Rendered:
    """One catalog item as a hospital system holds it."""
    name, spec = item["name"], item["spec"]
    form, maker = item["dosage_form"], item["manufacturer"]
    used: set[Variant] = set()
    is_drug = kind <= 4

    def hit(p: float, v: Variant) -> bool:
        if rng.random() < p:
            used.add(v)
            return True
        return False

    if is_drug and kind != 3:
        salts = [s for s in vocab.SALT_PREFIXES if s in name]
        if salts and hit(mix.salt_dropped, Variant.SALT_DROPPED):
            name = name.replace(salts[0], "", 1)
        stem, suffix = _strip_form(name)
        if suffix and suffix in _FORM_SYNONYMS and hit(mix.form_synonym, Variant.FORM_SYNONYM):
            name = stem + str(rng.choice(_FORM_SYNONYMS[suffix]))
        elif suffix and hit(mix.form_dropped, Variant.FORM_DROPPED):
            name = stem
            form = form or suffix
        if form and hit(mix.form_field, Variant.FORM_FIELD):
            options = (*_FIELD_SYNONYMS.get(form, (form,)), "")
            form = str(rng.choice(options))
    else:
        form = ""
    if spec and any(c.isdigit() for c in spec) and hit(mix.unit_spelling, Variant.UNIT_SPELLING):
        spec = respell_spec(spec, rng)
    pinyin = hit(mix.pinyin, Variant.PINYIN)
    if pinyin:
        name = initials(name)
        name = name.upper() if rng.random() < 0.7 else name
    if not pinyin and len(name) > 2 and hit(mix.spacing, Variant.SPACING):
        at = int(rng.integers(1, len(name)))
        name = name[:at] + str(rng.choice([" ", "  ", "·", "-", "　"])) + name[at:]
        name = (" " + name) if rng.random() < 0.3 else name
    if spec and hit(mix.spec_in_name, Variant.SPEC_IN_NAME):
        if rng.random() < 0.6:
            name += str(rng.choice(["(", "（", "["])) + spec + str(rng.choice([")", "）", "]"]))
        else:
            name += " " + spec
        spec = "" if rng.random() < 0.7 else spec
    elif spec and hit(mix.spec_missing, Variant.SPEC_MISSING):
        spec = ""
    if hit(mix.name_note, Variant.NAME_NOTE):
        name += str(rng.choice(_NOTES))
    if hit(mix.full_width, Variant.FULL_WIDTH):
        name = full_width(name, rng)
        spec = full_width(spec, rng)
    if maker:
        if hit(mix.mfr_missing, Variant.MFR_MISSING):
            maker = ""
        elif hit(mix.mfr_abbrev, Variant.MFR_ABBREV):
            maker = abbreviate_maker(maker, rng)
    return Rendered(name, spec, form, maker, frozenset(used))
