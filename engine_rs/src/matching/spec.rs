//! Specifications (规格) as sets of canonical tokens.
//!
//! `0.25g×24粒`, `250mg*24`, `0.25克x24粒/盒` all become {mass 250 mg, count 24}: numbers
//! are read with their unit, converted to one base unit per dimension and kept as integers
//! (thousandths of the base unit), so the comparison is exact and spelling-free. Words that
//! only describe packing (`每粒装`, `/盒`) are dropped; other words (`蜜炙`, `S`) stay as text
//! tokens, and model numbers (`F14`, `KD-12`, `4-0`) as opaque tokens.

use super::normalize::{fold_char, is_cjk};

/// A token's dimension, in the top byte of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Dim {
    Mass = 1,
    Volume = 2,
    Unit = 3,
    Percent = 4,
    Count = 5,
    Length = 6,
    Model = 7,
    Text = 8,
    Bare = 9,
}

const VALUE_MASK: u64 = (1 << 56) - 1;

/// The dimension of a token.
#[inline]
pub(crate) fn dim(token: u64) -> u8 {
    (token >> 56) as u8
}

/// How much a matching token of this dimension counts: strengths decide between sibling
/// items, pack counts and words less so.
#[inline]
pub(crate) fn weight(token: u64) -> f32 {
    match dim(token) {
        5 => 0.5,
        8 => 0.6,
        9 => 0.7,
        _ => 1.0,
    }
}

// Units after a number: (surface, dimension, factor to the base unit). Base units: µg,
// µl, IU, %, piece, µm. Longest surface first wins, so `mg` is not read as `m`.
const UNITS: &[(&str, Dim, f64)] = &[
    ("mg", Dim::Mass, 1e3),
    ("毫克", Dim::Mass, 1e3),
    ("ug", Dim::Mass, 1.0),
    ("mcg", Dim::Mass, 1.0),
    ("微克", Dim::Mass, 1.0),
    ("g", Dim::Mass, 1e6),
    ("克", Dim::Mass, 1e6),
    ("kg", Dim::Mass, 1e9),
    ("千克", Dim::Mass, 1e9),
    ("公斤", Dim::Mass, 1e9),
    ("ml", Dim::Volume, 1e3),
    ("毫升", Dim::Volume, 1e3),
    ("ul", Dim::Volume, 1.0),
    ("微升", Dim::Volume, 1.0),
    ("l", Dim::Volume, 1e6),
    ("升", Dim::Volume, 1e6),
    ("iu", Dim::Unit, 1.0),
    ("国际单位", Dim::Unit, 1.0),
    ("单位", Dim::Unit, 1.0),
    ("u", Dim::Unit, 1.0),
    ("%", Dim::Percent, 1.0),
    ("mm", Dim::Length, 1e3),
    ("毫米", Dim::Length, 1e3),
    ("cm", Dim::Length, 1e4),
    ("厘米", Dim::Length, 1e4),
    ("m", Dim::Length, 1e6),
    ("米", Dim::Length, 1e6),
];

/// Piece words: after a number they count (`24粒`), alone they only describe packing.
const PIECES: &str = "粒片袋支瓶丸贴揿喷枚个只盒包板张条根套块管次人份剂s";
/// Words that only frame a spec (`每粒装`, `每丸重`, `含`).
const FILLER: &str = "每装重含约各计内共为";

/// Appends the canonical tokens of `spec` to `out`, sorted and deduplicated among themselves.
pub(crate) fn tokens(spec: &str, out: &mut Vec<u64>) {
    let start = out.len();
    let chars: Vec<char> = spec.chars().map(fold_char).collect();
    let n = chars.len();
    let mut i = 0;
    let mut times = false; // a multiplication sign was seen: a bare number is a count
    let mut after_number = false; // an `x` here is a multiplication sign (`0.25g x24`)
                                  // Without numbers, piece words are the spec itself (`次`, `每人次` for services).
    let numeric = chars.iter().any(|c| c.is_ascii_digit());
    while i < n {
        let c = chars[i];
        if c.is_ascii_digit() || (c == '.' && i + 1 < n && chars[i + 1].is_ascii_digit()) {
            let (value, after) = number(&chars, i);
            i = after;
            // `4-0` sutures, `654-2`: a hyphenated pair is a model number.
            if i + 1 < n && chars[i] == '-' && chars[i + 1].is_ascii_digit() {
                let (second, after) = number(&chars, i + 1);
                i = after;
                out.push(opaque("-", value, second));
                times = false;
                continue;
            }
            let mut value = value;
            let mut j = skip_spaces(&chars, i);
            if j < n && chars[j] == '万' {
                value *= 1e4;
                j += 1;
            }
            if let Some((len, d, factor)) = unit_at(&chars, j) {
                out.push(measure(d, value * factor));
                i = j + len;
            } else if j < n && PIECES.contains(chars[j]) {
                out.push(measure(Dim::Count, value));
                i = j + 1;
            } else if j < n && chars[j] == '号' {
                out.push(opaque("号", value, 0.0));
                i = j + 1;
            } else if j < n && chars[j].is_ascii_alphabetic() && !is_times_at(&chars, j) {
                // An unknown unit (`18aa`): number and letters together.
                let end = (j..n)
                    .find(|&k| !chars[k].is_ascii_alphabetic())
                    .unwrap_or(n);
                let word: String = chars[j..end].iter().collect();
                out.push(opaque(&word, value, 0.0));
                i = end;
            } else {
                out.push(measure(if times { Dim::Count } else { Dim::Bare }, value));
                i = j.max(i);
            }
            times = false;
            after_number = true;
        } else if c == '*' || (after_number && is_times_at(&chars, i)) {
            times = true;
            after_number = false;
            i += 1;
        } else if c == ' ' {
            i += 1;
        } else if c.is_ascii_alphabetic() {
            let end = (i..n)
                .find(|&k| !chars[k].is_ascii_alphabetic())
                .unwrap_or(n);
            let word: String = chars[i..end].iter().collect();
            let mut j = end;
            if j + 1 < n && chars[j] == '-' && chars[j + 1].is_ascii_digit() {
                j += 1;
            }
            if j < n && chars[j].is_ascii_digit() {
                // `F14`, `KD-12`, `ID6.5`: a model number.
                let (value, after) = number(&chars, j);
                out.push(opaque(&word, value, 0.0));
                i = after;
            } else {
                if word != "x" {
                    out.push(text(&word));
                }
                i = end;
            }
            times = false;
            after_number = false;
        } else if is_cjk(c) {
            let end = (i..n).find(|&k| !is_cjk(chars[k])).unwrap_or(n);
            let word: String = chars[i..end]
                .iter()
                .filter(|&&c| !numeric || (!FILLER.contains(c) && !PIECES.contains(c)))
                .collect();
            if !word.is_empty() {
                out.push(text(&chars[i..end].iter().collect::<String>()));
            }
            i = end;
            after_number = false;
        } else {
            i += 1;
            after_number = false;
        }
    }
    out[start..].sort_unstable();
    let mut w = start;
    for r in start..out.len() {
        if w == start || out[r] != out[w - 1] {
            out[w] = out[r];
            w += 1;
        }
    }
    out.truncate(w);
}

fn skip_spaces(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i] == ' ' {
        i += 1;
    }
    i
}

/// The number starting at i (digits with at most one decimal point) and where it ends.
fn number(chars: &[char], i: usize) -> (f64, usize) {
    let mut end = i;
    let mut dot = false;
    while end < chars.len() {
        let c = chars[end];
        if c.is_ascii_digit() {
            end += 1;
        } else if c == '.' && !dot && chars.get(end + 1).is_some_and(|d| d.is_ascii_digit()) {
            dot = true;
            end += 1;
        } else {
            break;
        }
    }
    let s: String = chars[i..end].iter().collect();
    (s.parse().unwrap_or(0.0), end)
}

/// The longest unit at position i, as (length in chars, dimension, factor).
fn unit_at(chars: &[char], i: usize) -> Option<(usize, Dim, f64)> {
    let mut best: Option<(usize, Dim, f64)> = None;
    for &(surface, d, factor) in UNITS {
        let len = surface.chars().count();
        if i + len <= chars.len()
            && surface
                .chars()
                .zip(&chars[i..i + len])
                .all(|(a, &b)| a == b)
            && best.map_or(true, |(l, _, _)| len > l)
        {
            // An ASCII unit must end at a word boundary (`ml` but not the `m` of `mmol`),
            // except before a multiplication `x`.
            let next = chars.get(i + len);
            let ascii = surface.is_ascii() && surface != "%";
            if ascii
                && next.is_some_and(|c| c.is_ascii_alphabetic())
                && !is_times_at(chars, i + len)
            {
                continue;
            }
            best = Some((len, d, factor));
        }
    }
    best
}

/// An `x` followed by a digit or space: a multiplication sign where a number precedes it.
fn is_times_at(chars: &[char], i: usize) -> bool {
    chars.get(i) == Some(&'x')
        && chars
            .get(i + 1)
            .is_some_and(|c| c.is_ascii_digit() || *c == ' ')
}

/// A measured quantity in thousandths of its base unit.
fn measure(d: Dim, base_value: f64) -> u64 {
    let v = (base_value * 1000.0).round();
    let v = if v.is_finite() && v > 0.0 {
        (v as u64).min(VALUE_MASK)
    } else {
        0
    };
    (d as u64) << 56 | v
}

fn opaque(word: &str, a: f64, b: f64) -> u64 {
    (Dim::Model as u64) << 56
        | hash(&[
            word.as_bytes(),
            &a.to_bits().to_le_bytes(),
            &b.to_bits().to_le_bytes(),
        ])
}

fn text(word: &str) -> u64 {
    (Dim::Text as u64) << 56 | hash(&[word.as_bytes()])
}

/// FNV-1a, truncated to the 56 value bits: stable across runs and platforms.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & VALUE_MASK
}

/// Weighted Dice similarity of two sorted token sets.
pub(crate) fn similarity(a: &[u64], b: &[u64]) -> f32 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let (mut i, mut j) = (0, 0);
    let mut both = 0.0f32;
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += weight(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    let total: f32 = a.iter().chain(b).map(|&t| weight(t)).sum();
    (2.0 * both / total).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<u64> {
        let mut v = Vec::new();
        tokens(s, &mut v);
        v
    }

    #[test]
    fn unit_spellings_agree() {
        let base = toks("0.25g×24粒");
        assert_eq!(base.len(), 2);
        for s in [
            "0.25g*24",
            "0.25gx24粒",
            "250mg*24粒/盒",
            "0.25克X24粒",
            "２５０ｍｇ＊２４",
            "每粒装0.25g×24粒",
        ] {
            assert_eq!(toks(s), base, "{s}");
        }
        assert_eq!(toks("10ml:0.5g"), toks("10毫升:500毫克"));
        assert_eq!(toks("80万单位"), toks("800000iu"));
        assert_ne!(toks("0.5g×24粒"), base);
    }

    #[test]
    fn models_words_and_packing() {
        assert_eq!(toks("F14").len(), 1);
        assert_ne!(toks("F14"), toks("F16"));
        assert_eq!(toks("KD-12"), toks("kd12"));
        assert_ne!(toks("4-0 75cm"), toks("3-0 75cm"));
        assert_eq!(toks("蜜炙").len(), 1);
        assert_eq!(toks("0.25g/盒"), toks("0.25g"));
        assert_eq!(toks("每丸重0.2g×20丸"), toks("0.2g*20"));
        assert_eq!(toks("18G"), toks("18g"));
        assert_eq!(toks("2 gx9袋/盒"), toks("2g*9袋"));
        assert_eq!(toks("次").len(), 1);
        assert_ne!(toks("每人次"), toks("次"));
    }

    #[test]
    fn weighted_similarity() {
        let a = toks("0.25g×24粒");
        assert_eq!(similarity(&a, &a), 1.0);
        let strength_only = toks("0.25g");
        let s = similarity(&a, &strength_only);
        assert!(s > 0.7 && s < 1.0, "{s}");
        assert_eq!(similarity(&a, &toks("0.5g")), 0.0);
        assert_eq!(similarity(&a, &[]), 0.0);
    }
}
