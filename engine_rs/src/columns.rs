//! Arrow-style string columns: one UTF-8 buffer plus n+1 offsets, no allocation per value.
//!
//! A million catalog names as `Vec<String>` would cost a million allocations and ~24 bytes of
//! header each; this layout keeps them in two allocations and validates UTF-8 once.

use crate::error::EngineError;

/// Asks the processor to start loading the cache line at `p` (a hint only: any address is
/// allowed, nothing is read).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes nothing the program can observe, whatever
    // the address; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches the cache lines of `s[from..to]` (clamped to the slice).
#[inline]
pub(crate) fn prefetch_rows<T>(s: &[T], from: usize, to: usize) {
    let to = to.min(s.len());
    if from >= to {
        return;
    }
    let bytes = (to - from) * std::mem::size_of::<T>();
    let first = s[from..].as_ptr().cast::<u8>();
    // one prefetch per 64-byte line, the last one covering the end of the range
    let mut at = 0;
    while at < bytes {
        prefetch(first.wrapping_add(at));
        at += 64;
    }
    prefetch(first.wrapping_add(bytes - 1));
}

/// Checks Arrow-style offsets: n+1 entries from 0, never decreasing, ending at the data length.
fn check_offsets(field: &str, data: &[u8], offsets: &[i64]) -> Result<(), EngineError> {
    let bad = |reason: &str| Err(EngineError::column(field, reason));
    match (offsets.first(), offsets.last()) {
        (None, _) | (_, None) => bad("offsets must have n+1 entries"),
        (Some(&first), _) if first != 0 => bad("offsets must start at 0"),
        (_, Some(&last)) if last != data.len() as i64 => {
            bad("last offset must equal the data length")
        }
        _ if offsets.windows(2).any(|w| w[1] < w[0]) => bad("offsets must not decrease"),
        _ => Ok(()),
    }
}

/// An immutable column of strings.
#[derive(Debug, Clone, Default)]
pub struct StrColumn {
    data: Box<str>,
    offsets: Box<[u32]>,
}

impl StrColumn {
    /// Builds a column from raw bytes and n+1 offsets, validating both.
    pub fn from_parts(field: &str, data: &[u8], offsets: &[i64]) -> Result<Self, EngineError> {
        let bad = |reason: &str| EngineError::column(field, reason);
        check_offsets(field, data, offsets)?;
        if data.len() > u32::MAX as usize {
            return Err(bad("column data exceeds 4 GiB"));
        }
        let text = std::str::from_utf8(data).map_err(|_| bad("data is not valid UTF-8"))?;
        let mut offs = Vec::with_capacity(offsets.len());
        for &o in offsets {
            let o = o as usize;
            if !text.is_char_boundary(o) {
                return Err(bad("an offset splits a UTF-8 character"));
            }
            offs.push(o as u32);
        }
        Ok(Self {
            data: text.into(),
            offsets: offs.into_boxed_slice(),
        })
    }

    /// Builds a column from string slices (tests and small data).
    pub fn from_strs<S: AsRef<str>>(values: &[S]) -> Self {
        let mut data = String::new();
        let mut offsets = Vec::with_capacity(values.len() + 1);
        offsets.push(0u32);
        for v in values {
            data.push_str(v.as_ref());
            offsets.push(u32::try_from(data.len()).expect("test column under 4 GiB"));
        }
        Self {
            data: data.into(),
            offsets: offsets.into_boxed_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The i-th value; `i` must be in range.
    #[inline]
    pub fn get(&self, i: usize) -> &str {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The whole data buffer (every value, back to back).
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.data.as_bytes()
    }

    /// Start and length of the i-th value in the data buffer.
    #[inline]
    pub fn span(&self, i: usize) -> (u32, u32) {
        let (a, b) = (self.offsets[i], self.offsets[i + 1]);
        (a, b - a)
    }

    /// The value at a span returned by `span`.
    #[inline]
    pub fn at_span(&self, off: u32, len: u32) -> &str {
        &self.data[off as usize..(off + len) as usize]
    }

    /// Bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.data.len() + self.offsets.len() * 4
    }
}

/// A string column stored as its distinct values plus one index per row. Catalog names,
/// forms, makers and specs repeat across thousands of items (one drug in many packs from
/// many makers), so a million-item catalog keeps each distinct text once.
#[derive(Debug, Clone, Default)]
pub struct DictColumn {
    values: StrColumn,
    index: Box<[u32]>,
}

impl DictColumn {
    /// Dictionary-encodes `col`; values keep the order of their first appearance.
    pub fn encode(col: &StrColumn) -> Self {
        use std::hash::BuildHasher;
        let hasher = foldhash::fast::FixedState::with_seed(7);
        let mut seen: hashbrown::HashTable<u32> = hashbrown::HashTable::new();
        let mut firsts: Vec<u32> = Vec::new();
        let mut index = Vec::with_capacity(col.len());
        for i in 0..col.len() {
            let v = col.get(i);
            let h = hasher.hash_one(v);
            let id = match seen.find(h, |&d| col.get(firsts[d as usize] as usize) == v) {
                Some(&d) => d,
                None => {
                    let d = firsts.len() as u32;
                    firsts.push(i as u32);
                    seen.insert_unique(h, d, |&d| {
                        hasher.hash_one(col.get(firsts[d as usize] as usize))
                    });
                    d
                }
            };
            index.push(id);
        }
        let distinct: Vec<&str> = firsts.iter().map(|&i| col.get(i as usize)).collect();
        Self {
            values: StrColumn::from_strs(&distinct),
            index: index.into_boxed_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The i-th row's value.
    #[inline]
    pub fn get(&self, i: usize) -> &str {
        self.values.get(self.index[i] as usize)
    }

    /// Distinct values held.
    pub fn distinct(&self) -> usize {
        self.values.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.values.heap_bytes() + self.index.len() * 4
    }
}

/// A borrowed string column (bytes + int64 offsets), validated for shape but not copied:
/// fee lines arrive by the million and are only looked up, so their bytes are compared as
/// they are, without a UTF-8 pass.
#[derive(Debug, Clone, Copy)]
pub struct StrView<'a> {
    data: &'a [u8],
    offsets: &'a [i64],
}

impl<'a> StrView<'a> {
    pub fn new(field: &str, data: &'a [u8], offsets: &'a [i64]) -> Result<Self, EngineError> {
        check_offsets(field, data, offsets)?;
        Ok(Self { data, offsets })
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The i-th value's bytes; `i` must be in range.
    #[inline]
    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Prefetches the offsets of rows `from..to`.
    #[inline]
    pub fn prefetch_offsets(&self, from: usize, to: usize) {
        prefetch_rows(self.offsets, from, to + 1);
    }

    /// Prefetches the bytes of rows `from..to` (reads their offsets: prefetch those first).
    #[inline]
    pub fn prefetch_data(&self, from: usize, to: usize) {
        let to = to.min(self.len());
        if from < to {
            prefetch_rows(
                self.data,
                self.offsets[from] as usize,
                self.offsets[to] as usize,
            );
        }
    }

    /// The i-th value for messages (invalid UTF-8 shown replaced).
    pub fn display(&self, i: usize) -> String {
        String::from_utf8_lossy(self.get(i)).into_owned()
    }
}

/// Owned bytes and offsets for building views in tests and small callers.
#[derive(Debug, Clone, Default)]
pub struct OwnedStrs {
    pub data: Vec<u8>,
    pub offsets: Vec<i64>,
}

impl OwnedStrs {
    pub fn from_strs<S: AsRef<str>>(values: &[S]) -> Self {
        let mut out = Self {
            data: Vec::new(),
            offsets: vec![0],
        };
        for v in values {
            out.data.extend_from_slice(v.as_ref().as_bytes());
            out.offsets.push(out.data.len() as i64);
        }
        out
    }

    pub fn view(&self) -> StrView<'_> {
        StrView {
            data: &self.data,
            offsets: &self.offsets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = StrColumn::from_strs(&["阿莫西林", "", "0.25g"]);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(0), "阿莫西林");
        assert_eq!(c.get(1), "");
        assert_eq!(c.get(2), "0.25g");
    }

    #[test]
    fn dictionary_encoding_keeps_every_row() {
        let rows = ["片", "胶囊", "片", "", "胶囊", "片"];
        let d = DictColumn::encode(&StrColumn::from_strs(&rows));
        assert_eq!(d.distinct(), 3);
        assert_eq!((0..rows.len()).map(|i| d.get(i)).collect::<Vec<_>>(), rows);
    }

    #[test]
    fn rejects_bad_offsets() {
        let data = "阿".as_bytes();
        assert!(StrColumn::from_parts("name", data, &[0, 1, 3]).is_err());
        assert!(StrColumn::from_parts("name", data, &[0, 3, 2]).is_err());
        assert!(StrColumn::from_parts("name", data, &[1, 3]).is_err());
        assert!(StrColumn::from_parts("name", data, &[0, 2]).is_err());
        assert!(StrColumn::from_parts("name", &[0xff], &[0, 1]).is_err());
        assert!(StrColumn::from_parts("name", data, &[0, 3]).is_ok());
    }
}
