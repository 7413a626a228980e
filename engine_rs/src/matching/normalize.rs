//! Text normalisation for matching: character folding, splitting a hospital name into its
//! core name, spec text and bracketed notes, dosage forms, manufacturer cores, and n-grams.
//!
//! Catalog and query text go through the same functions, so whatever a rule gets wrong it
//! gets wrong on both sides alike; the rules only need to make the variants integrators type
//! (full-width, `片剂`/`片`, specs inside names, `有限公司`) land on the same features.

use pinyin::ToPinyin;

/// Folds one character: full-width ASCII to ASCII, ASCII to lower case, CJK punctuation and
/// brackets to their ASCII counterparts, multiplication signs to `*`, micro signs to `u`,
/// every kind of space to ' '.
#[inline]
pub(crate) fn fold_char(c: char) -> char {
    match c {
        'A'..='Z' => c.to_ascii_lowercase(),
        '\u{FF01}'..='\u{FF5E}' => {
            // Full-width ASCII block: a fixed offset from its ASCII twin.
            let a = char::from_u32(c as u32 - 0xFEE0).unwrap_or(c);
            a.to_ascii_lowercase()
        }
        '\u{3000}' | '\u{00A0}' | '\t' | '\n' | '\r' => ' ',
        '【' | '〔' | '〖' | '「' | '『' | '《' | '〈' => '(',
        '】' | '〕' | '〗' | '」' | '』' | '》' | '〉' => ')',
        '×' | '✕' | '╳' | '✖' | '⨯' => '*',
        'µ' | 'μ' => 'u',
        '、' => ',',
        '。' => '.',
        '—' | '–' | '‐' => '-',
        '·' | '•' | '・' => ' ',
        _ => c,
    }
}

/// A folded copy of `s`.
pub(crate) fn fold(s: &str) -> String {
    s.chars().map(fold_char).collect()
}

/// Characters that carry meaning in names: letters (CJK included), digits, roman numerals.
#[inline]
pub(crate) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
}

#[inline]
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}')
}

/// Canonical dosage forms; forms of one family (tablets, capsules, ...) share `family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Form {
    pub id: u8,
    pub family: u8,
}

/// No dosage form known.
pub(crate) const NO_FORM: u8 = 0;

// (surface, form id, family). Suffix matching takes the longest surface, so `肠溶胶囊` beats
// `胶囊`; synonyms (`片剂`, `冲剂`, `针剂`) share an id with the canonical spelling.
const FORMS: &[(&str, u8, u8)] = &[
    ("片", 1, 1),
    ("片剂", 1, 1),
    ("薄膜衣片", 1, 1),
    ("肠溶片", 2, 1),
    ("肠溶片剂", 2, 1),
    ("缓释片", 3, 1),
    ("控释片", 3, 1),
    ("分散片", 4, 1),
    ("咀嚼片", 5, 1),
    ("泡腾片", 6, 1),
    ("含片", 7, 1),
    ("胶囊", 10, 2),
    ("胶囊剂", 10, 2),
    ("硬胶囊", 10, 2),
    ("软胶囊", 11, 2),
    ("软胶囊剂", 11, 2),
    ("肠溶胶囊", 12, 2),
    ("缓释胶囊", 13, 2),
    ("颗粒", 20, 3),
    ("颗粒剂", 20, 3),
    ("冲剂", 20, 3),
    ("干混悬剂", 21, 3),
    ("散", 22, 3),
    ("散剂", 22, 3),
    ("注射液", 30, 4),
    ("注射剂", 30, 4),
    ("针剂", 30, 4),
    ("粉针剂", 31, 4),
    ("注射用无菌粉末", 31, 4),
    ("口服溶液", 40, 5),
    ("口服溶液剂", 40, 5),
    ("口服液", 41, 5),
    ("合剂", 42, 5),
    ("糖浆", 43, 5),
    ("糖浆剂", 43, 5),
    ("溶液", 44, 5),
    ("溶液剂", 44, 5),
    ("混悬液", 45, 5),
    ("洗剂", 46, 5),
    ("滴眼液", 50, 6),
    ("滴眼剂", 50, 6),
    ("眼药水", 50, 6),
    ("滴耳液", 51, 6),
    ("滴耳剂", 51, 6),
    ("滴鼻液", 52, 6),
    ("乳膏", 60, 7),
    ("乳膏剂", 60, 7),
    ("软膏", 61, 7),
    ("软膏剂", 61, 7),
    ("凝胶", 62, 7),
    ("凝胶剂", 62, 7),
    ("眼膏", 63, 7),
    ("气雾剂", 70, 8),
    ("喷雾剂", 71, 8),
    ("吸入剂", 72, 8),
    ("丸", 80, 9),
    ("丸剂", 80, 9),
    ("水丸", 81, 9),
    ("蜜丸", 82, 9),
    ("大蜜丸", 82, 9),
    ("浓缩丸", 83, 9),
    ("滴丸", 84, 9),
    ("滴丸剂", 84, 9),
    ("贴膏", 90, 10),
    ("贴膏剂", 90, 10),
    ("贴剂", 91, 10),
    ("栓", 95, 11),
    ("栓剂", 95, 11),
    ("饮片", 100, 12),
    ("中药饮片", 100, 12),
];

/// Field-only spellings: as name suffixes they would eat part of the name (`肝素片` is not
/// `肝` + `素片`).
const FIELD_FORMS: &[(&str, u8, u8)] = &[("素片", 1, 1)];

/// The prefix form of powders for injection (注射用头孢曲松钠).
const INJECTION_PREFIX: &str = "注射用";
const POWDER: Form = Form { id: 31, family: 4 };

/// The form a whole dosage-form field names (`片剂`, `胶囊`, `针剂`), if known.
pub(crate) fn form_of_field(field: &str) -> Option<Form> {
    let f: String = fold(field).chars().filter(|&c| is_word_char(c)).collect();
    if f.is_empty() {
        return None;
    }
    if let Some(&(_, id, family)) = FORMS.iter().chain(FIELD_FORMS).find(|(s, _, _)| *s == f) {
        return Some(Form { id, family });
    }
    if f.starts_with(INJECTION_PREFIX) {
        return Some(POWDER);
    }
    // `片剂(薄膜衣)`, `胶囊剂(硬)`: take a known suffix or prefix.
    let (_, form) = split_form(&f);
    form.or_else(|| {
        FORMS
            .iter()
            .filter(|(s, _, _)| f.starts_with(s))
            .max_by_key(|(s, _, _)| s.len())
            .map(|&(_, id, family)| Form { id, family })
    })
}

/// Splits a core name into (stem, form) by a known form suffix or the `注射用` prefix; the
/// stem keeps at least two characters so `片` alone stays a name. (`针` is no form suffix:
/// `缝合针` and `采血针` are materials.)
pub(crate) fn split_form(core: &str) -> (&str, Option<Form>) {
    if let Some(rest) = core.strip_prefix(INJECTION_PREFIX) {
        if rest.chars().count() >= 2 {
            return (rest, Some(POWDER));
        }
    }
    let mut best: Option<(usize, Form)> = None;
    for &(s, id, family) in FORMS {
        if core.ends_with(s) && best.map_or(true, |(len, _)| s.len() > len) {
            let stem = &core[..core.len() - s.len()];
            if stem.chars().count() >= 2 {
                best = Some((s.len(), Form { id, family }));
            }
        }
    }
    match best {
        Some((len, form)) => (&core[..core.len() - len], Some(form)),
        None => (core, None),
    }
}

// Salt and ester parts of generic names: hospitals often leave them out (二甲双胍片 for
// 盐酸二甲双胍片), so they are compared apart from the rest of the stem. Longest first.
const SALT_PREFIXES: &[&str] = &[
    "葡萄糖酸",
    "甲磺酸",
    "苯磺酸",
    "马来酸",
    "富马酸",
    "琥珀酸",
    "枸橼酸",
    "酒石酸",
    "氢溴酸",
    "盐酸",
    "硫酸",
    "磷酸",
    "醋酸",
    "乳酸",
];
const SALT_SUFFIXES: &[&str] = &["钠", "钾", "钙", "镁"];

/// Splits a salt off a stem: (stem without it, salt id; 0 = none). A suffix salt is only
/// taken from stems of four or more characters (`头孢曲松钠`, not `氯化钠`).
pub(crate) fn split_salt(stem: &str) -> (&str, u8) {
    for (i, salt) in SALT_PREFIXES.iter().enumerate() {
        if let Some(rest) = stem.strip_prefix(salt) {
            if rest.chars().count() >= 2 {
                return (rest, i as u8 + 1);
            }
        }
    }
    for (i, salt) in SALT_SUFFIXES.iter().enumerate() {
        if let Some(rest) = stem.strip_suffix(salt) {
            if rest.chars().count() >= 3 {
                return (rest, (SALT_PREFIXES.len() + i) as u8 + 1);
            }
        }
    }
    (stem, 0)
}

/// A name taken apart: the core (word characters only), spec-like text found in brackets or
/// after the name, and bracketed notes without digits (`(集采)`, `(乳胶)`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct NameParts {
    pub core: String,
    pub spec_text: String,
    pub aux: String,
}

/// Splits a hospital or catalog name (`阿莫西林胶囊(0.25g×24)`, `阿莫西林胶囊 0.25g*24粒`,
/// `5%葡萄糖注射液`) into its parts.
pub(crate) fn split_name(name: &str) -> NameParts {
    let folded = fold(name);
    let mut parts = NameParts::default();
    // Bracketed segments out of the main text; an unclosed bracket runs to the end.
    let mut main = String::with_capacity(folded.len());
    let mut depth = 0usize;
    let mut seg = String::new();
    for c in folded.chars() {
        match c {
            '(' | '[' | '{' => {
                if depth > 0 {
                    seg.push(' ');
                }
                depth += 1;
            }
            ')' | ']' | '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    take_bracket(&seg, &mut parts);
                    seg.clear();
                    main.push(' ');
                } else {
                    seg.push(' ');
                }
            }
            _ if depth > 0 => seg.push(c),
            _ => main.push(c),
        }
    }
    if !seg.is_empty() {
        take_bracket(&seg, &mut parts);
    }
    // A whitespace-separated segment starting with a digit begins the spec.
    // So does one with a digit anywhere (`MT-10`); after pinyin initials (`AMXLJN 0.25g`,
    // `HL 切段`) any further word does.
    let mut name_end = main.len();
    let mut initials_first = false;
    for (n, (pos, word)) in word_spans(&main).enumerate() {
        if n == 0 {
            initials_first = looks_like_initials(word);
        } else if initials_first || word.contains(|c: char| c.is_ascii_digit()) {
            name_end = pos;
            break;
        }
    }
    let (head, tail) = main.split_at(name_end);
    push_spec(&mut parts.spec_text, tail);
    // Within the name: a leading strength (`5%葡萄糖`) or a glued trailing spec (`合剂10ml`).
    let mut core = String::with_capacity(head.len());
    let chars: Vec<char> = head.chars().filter(|&c| c != ' ').collect();
    let mut start = 0;
    if chars.first().is_some_and(|c| c.is_ascii_digit()) {
        let lead = chars
            .iter()
            .take_while(|&&c| c.is_ascii_digit() || matches!(c, '.' | '%' | '*' | ':' | '/'))
            .count();
        let rest_cjk = chars[lead..].iter().filter(|&&c| is_cjk(c)).count();
        if rest_cjk >= 2 && chars[..lead].iter().any(|&c| c == '%' || c == '.') {
            push_spec(
                &mut parts.spec_text,
                &chars[..lead].iter().collect::<String>(),
            );
            start = lead;
        }
    }
    let mut end = chars.len();
    for i in start + 1..chars.len() {
        if chars[i].is_ascii_digit() && is_cjk(chars[i - 1]) {
            let before = chars[start..i].iter().filter(|&&c| is_cjk(c)).count();
            if before >= 2 {
                end = i;
                break;
            }
        }
    }
    push_spec(
        &mut parts.spec_text,
        &chars[end..].iter().collect::<String>(),
    );
    core.extend(chars[start..end].iter().filter(|&&c| is_word_char(c)));
    if core.is_empty() {
        // A name that was all brackets or numbers: keep what it has.
        core = folded.chars().filter(|&c| is_word_char(c)).collect();
        parts.spec_text.clear();
        parts.aux.clear();
    }
    parts.core = core;
    parts
}

fn take_bracket(seg: &str, parts: &mut NameParts) {
    if seg.chars().any(|c| c.is_ascii_digit()) {
        push_spec(&mut parts.spec_text, seg);
    } else {
        // Notes stay apart (`加收 每小时`) so no gram spans two of them.
        if !parts.aux.is_empty() {
            parts.aux.push(' ');
        }
        parts.aux.extend(seg.chars().filter(|&c| is_word_char(c)));
    }
}

fn push_spec(spec: &mut String, text: &str) {
    if text.trim().is_empty() {
        return;
    }
    if !spec.is_empty() {
        spec.push(' ');
    }
    spec.push_str(text.trim());
}

/// Byte positions and text of whitespace-separated words.
fn word_spans(s: &str) -> impl Iterator<Item = (usize, &str)> {
    s.split(' ')
        .scan(0usize, |pos, w| {
            let at = *pos;
            *pos += w.len() + 1;
            Some((at, w))
        })
        .filter(|(_, w)| !w.is_empty())
}

/// Whether a core name is pinyin initials typed by an integrator (`amxljn`): ASCII letters
/// and digits only, at least two letters.
pub(crate) fn looks_like_initials(core: &str) -> bool {
    core.bytes().all(|b| b.is_ascii_alphanumeric())
        && core.bytes().filter(|b| b.is_ascii_alphabetic()).count() >= 2
}

/// Pinyin initials of a core name: the first letter of each character's default reading,
/// ASCII letters and digits as they are, anything else skipped.
pub(crate) fn initials(core: &str) -> String {
    let mut out = String::with_capacity(core.len());
    for c in core.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if let Some(p) = c.to_pinyin() {
            out.push_str(p.first_letter());
        }
    }
    out
}

// Legal forms and trades stripped from the end of a manufacturer name, repeatedly.
const MAKER_SUFFIXES: &[&str] = &[
    "股份有限公司",
    "有限责任公司",
    "有限公司",
    "集团公司",
    "公司",
    "总厂",
    "分厂",
    "集团",
    "股份",
    "生物医学工程",
    "生物制药",
    "医疗器械",
    "医疗用品",
    "医用材料",
    "医疗科技",
    "中药饮片",
    "生物科技",
    "生物技术",
    "制药厂",
    "制药",
    "药业",
    "医药",
    "药厂",
    "饮片",
    "中药",
    "药材",
    "科技",
    "厂",
];

/// The distinctive core of a manufacturer name: `华北制药股份有限公司` and `华北制药` both
/// give `华北`; `石药集团欧意药业有限公司` gives `石药欧意`. Place names are kept, since
/// `浙江华康` and `江苏华康` are different makers; an abbreviation without the place still
/// matches by containment.
pub(crate) fn maker_core(maker: &str) -> String {
    let folded = fold(maker);
    let mut s = String::with_capacity(folded.len());
    let mut depth = 0usize;
    for c in folded.chars() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 && is_word_char(c) => s.push(c),
            _ => {}
        }
    }
    let all = s.clone();
    loop {
        let before = s.len();
        for suf in MAKER_SUFFIXES {
            // Keep at least two characters: `制药厂` stays a name, not `制`.
            if s.ends_with(suf) && s[..s.len() - suf.len()].chars().count() >= 2 {
                s.truncate(s.len() - suf.len());
                break;
            }
        }
        if s.len() == before {
            break;
        }
    }
    let s = s.replace("集团", "").replace("股份", "");
    if s.is_empty() {
        all
    } else {
        s
    }
}

// Legal forms only: what is left still tells `普正药业` from `普正制药厂`.
const LEGAL_SUFFIXES: &[&str] = &[
    "股份有限公司",
    "有限责任公司",
    "有限公司",
    "集团公司",
    "公司",
    "集团",
    "股份",
];

/// Grams of a manufacturer for matching: the bigrams of its `maker_core`, then one key for
/// its name without the legal form (`普正药业` for `普正药业集团股份有限公司`), which sorts
/// last (see `maker_name_key`).
pub(crate) fn maker_grams(maker: &str, out: &mut Vec<u64>) {
    let start = out.len();
    char_grams(&maker_core(maker), out);
    if out.len() == start {
        return;
    }
    let mut s: String = fold(maker).chars().filter(|&c| is_word_char(c)).collect();
    loop {
        let before = s.len();
        for suf in LEGAL_SUFFIXES {
            if s.ends_with(suf) && s.len() > suf.len() {
                s.truncate(s.len() - suf.len());
                break;
            }
        }
        if s.len() == before {
            break;
        }
    }
    let s = s.replace("集团", "").replace("股份", "");
    // FNV-1a: stable, and only compared for equality.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    out.push(SPACE_MAKER_NAME | (h & ((1 << 56) - 1)));
}

/// The trailing name key of `maker_grams` output, split from the core grams.
#[inline]
pub(crate) fn maker_name_key(grams: &[u64]) -> (&[u64], Option<u64>) {
    match grams.split_last() {
        Some((&last, rest)) if last >> 56 == SPACE_MAKER_NAME >> 56 => (rest, Some(last)),
        _ => (grams, None),
    }
}

// Gram keys: the top byte says which space a gram lives in, so one hash map holds them all.
const SPACE_BIGRAM: u64 = 1 << 56;
const SPACE_UNIGRAM: u64 = 2 << 56;
const SPACE_INITIALS: u64 = 3 << 56;
const SPACE_MAKER_NAME: u64 = 4 << 56;

/// Character bigrams of the words of `s` (a one-character word gives its unigram), sorted
/// and deduplicated, appended to `out`.
pub(crate) fn char_grams(s: &str, out: &mut Vec<u64>) {
    let start = out.len();
    let mut prev: Option<char> = None;
    let mut n = 0usize;
    // Spaces separate words: no gram spans one, and a one-character word is a unigram.
    for c in s.chars().chain(std::iter::once(' ')) {
        if c == ' ' {
            if let (Some(p), 1) = (prev, n) {
                out.push(SPACE_UNIGRAM | p as u64);
            }
            prev = None;
            n = 0;
            continue;
        }
        if let Some(p) = prev {
            out.push(SPACE_BIGRAM | (p as u64) << 21 | c as u64);
        }
        prev = Some(c);
        n += 1;
    }
    out[start..].sort_unstable();
    dedup_tail(out, start);
}

/// Bigrams of an initials string in their own key space (`am`, `mx`, ...).
pub(crate) fn initial_grams(s: &str, out: &mut Vec<u64>) {
    let start = out.len();
    let b = s.as_bytes();
    if b.len() == 1 {
        out.push(SPACE_INITIALS | (b[0] as u64) << 8);
    }
    for w in b.windows(2) {
        out.push(SPACE_INITIALS | (w[0] as u64) << 8 | w[1] as u64);
    }
    out[start..].sort_unstable();
    dedup_tail(out, start);
}

fn dedup_tail(v: &mut Vec<u64>, start: usize) {
    let mut w = start;
    for r in start..v.len() {
        if w == start || v[r] != v[w - 1] {
            v[w] = v[r];
            w += 1;
        }
    }
    v.truncate(w);
}

/// Size of the intersection of two sorted, deduplicated gram lists.
#[inline]
pub(crate) fn common(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// Dice coefficient of two sorted gram sets (0 when either is empty).
#[inline]
pub(crate) fn dice(a: &[u64], b: &[u64]) -> f32 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    2.0 * common(a, b) as f32 / (a.len() + b.len()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_width_case_and_punctuation() {
        assert_eq!(fold("ＡＢｃ１２（）"), "abc12()");
        assert_eq!(fold("0.25g×24粒"), "0.25g*24粒");
        assert_eq!(fold("【甲】　μg"), "(甲) ug");
    }

    #[test]
    fn splits_specs_out_of_names() {
        let p = split_name("阿莫西林胶囊(0.25g×24)");
        assert_eq!(
            (p.core.as_str(), p.spec_text.as_str()),
            ("阿莫西林胶囊", "0.25g*24")
        );
        let p = split_name("阿莫西林胶囊 0.25g*24粒");
        assert_eq!(
            (p.core.as_str(), p.spec_text.as_str()),
            ("阿莫西林胶囊", "0.25g*24粒")
        );
        let p = split_name("止咳合剂10ml*6支");
        assert_eq!(
            (p.core.as_str(), p.spec_text.as_str()),
            ("止咳合剂", "10ml*6支")
        );
        let p = split_name("5%葡萄糖注射液");
        assert_eq!(
            (p.core.as_str(), p.spec_text.as_str()),
            ("葡萄糖注射液", "5%")
        );
        let p = split_name("维生素B12片（集采）");
        assert_eq!((p.core.as_str(), p.aux.as_str()), ("维生素b12片", "集采"));
        let p = split_name("人工晶状体(普通型) MT-10");
        assert_eq!(
            (p.core.as_str(), p.spec_text.as_str()),
            ("人工晶状体", "mt-10")
        );
        let p = split_name("HL 切段");
        assert_eq!((p.core.as_str(), p.spec_text.as_str()), ("hl", "切段"));
        let p = split_name("胸部CT(加收)[每小时]");
        assert_eq!(p.aux, "加收 每小时");
        let p = split_name(" 板杜健  脾片");
        assert_eq!(p.core, "板杜健脾片");
        let p = split_name("(0.25g)");
        assert_eq!(p.core, "025g");
    }

    #[test]
    fn dosage_forms_and_synonyms() {
        assert_eq!(split_form("阿莫西林胶囊").0, "阿莫西林");
        assert_eq!(split_form("阿莫西林胶囊剂").1, split_form("阿莫西林胶囊").1);
        assert_eq!(split_form("注射用头孢曲松钠"), ("头孢曲松钠", Some(POWDER)));
        assert_ne!(split_form("阿司匹林肠溶片").1, split_form("阿司匹林片").1);
        assert_eq!(split_form("缝合针").1, None);
        assert_eq!(split_form("马来酸肝素片").0, "马来酸肝素");
        assert_eq!(form_of_field("素片"), form_of_field("片剂"));
        assert_eq!(form_of_field("片剂"), split_form("二甲双胍片").1);
        assert_eq!(form_of_field("针剂").map(|f| f.family), Some(4));
        assert_eq!(form_of_field(""), None);
    }

    #[test]
    fn salts() {
        assert_eq!(split_salt("盐酸二甲双胍"), ("二甲双胍", 1 + 9));
        assert_eq!(split_salt("头孢曲松钠").0, "头孢曲松");
        assert_eq!(split_salt("氯化钠"), ("氯化钠", 0));
        assert_eq!(split_salt("盐酸").1, 0);
    }

    #[test]
    fn manufacturer_cores() {
        assert_eq!(maker_core("华北制药股份有限公司"), "华北");
        assert_eq!(maker_core("华北制药"), "华北");
        assert_eq!(maker_core("石药集团欧意药业有限公司"), "石药欧意");
        assert_eq!(maker_core("正中制药厂(山东)有限公司"), "正中");
        assert_eq!(maker_core("制药厂"), "制药");
    }

    #[test]
    fn manufacturer_grams() {
        let g = |s: &str| {
            let mut v = Vec::new();
            maker_grams(s, &mut v);
            v
        };
        let (full, short, other) = (
            g("普正药业集团股份有限公司"),
            g("普正药业"),
            g("普正制药厂"),
        );
        assert_eq!(full, short);
        assert_eq!(maker_name_key(&full).0, maker_name_key(&other).0);
        assert_ne!(maker_name_key(&full).1, maker_name_key(&other).1);
        assert!(g("").is_empty());
    }

    #[test]
    fn initials_of_names() {
        assert_eq!(initials("阿莫西林胶囊"), "amxljn");
        assert_eq!(initials("维生素b12片"), "wssb12p");
        assert!(looks_like_initials("amxljn"));
        assert!(!looks_like_initials("阿莫西林"));
        assert!(!looks_like_initials("12"));
    }

    #[test]
    fn grams_and_dice() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        char_grams("阿莫西林", &mut a);
        char_grams("阿莫西林", &mut b);
        assert_eq!(a.len(), 3);
        assert_eq!(dice(&a, &b), 1.0);
        b.clear();
        char_grams("参", &mut b);
        assert_eq!(b.len(), 1);
        let mut w = Vec::new();
        char_grams("加收 每小时 参", &mut w);
        assert_eq!(w.len(), 4);
        assert_eq!(dice(&a, &b), 0.0);
        let mut c = Vec::new();
        initial_grams("amxljn", &mut c);
        assert_eq!(c.len(), 5);
    }
}
