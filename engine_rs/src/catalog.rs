//! The catalog index: insurance items and hospital-to-insurance mappings (对照) in columns,
//! with constant-time lookup by code.
//!
//! Built once from bulk columns and then immutable, so a front-end can build the next version
//! beside the current one and swap the whole index (see `CatalogSlot`) while calls are in flight.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::columns::{prefetch, DictColumn, StrColumn};
use crate::error::EngineError;

/// No item: an unmapped hospital code, or a mapping whose insurance code is not in the catalog.
pub const NO_ITEM: u32 = u32::MAX;

/// Item kinds (目录类别).
pub const KIND_MAX: u8 = 6;
/// Fee categories (med_chrgitm_type 01..14); slot 0 holds lines with no item.
pub const N_CATEGORIES: usize = 15;

/// The item columns of one catalog version, as they arrive in bulk.
#[derive(Debug, Default, Clone)]
pub struct ItemColumns {
    pub code: StrColumn,
    pub name: StrColumn,
    pub spec: StrColumn,
    pub dosage_form: StrColumn,
    pub manufacturer: StrColumn,
    pub kind: Vec<u8>,
    pub chrgitm_lv: Vec<u8>,
    pub fee_category: Vec<u8>,
    pub price_cap: Vec<i64>,
    /// Row-major `n x slots`: column 0 default, column j for `selfpay_psn_types[j-1]`.
    pub selfpay_prop_bp: Vec<i32>,
    pub selfpay_slots: usize,
    pub inpatient_only: Vec<bool>,
    pub sex: Vec<u8>,
    pub age_min: Vec<u8>,
    pub age_max: Vec<u8>,
    /// Comma-separated ICD-10 prefixes; empty = no diagnosis limit.
    pub diagnoses: StrColumn,
    pub valid_from: Vec<i32>,
    pub valid_to: Vec<i32>,
}

/// Most pre-self-pay columns (default + three person types) an item carries inline.
pub const MAX_SELFPAY_SLOTS: usize = 4;

/// The fields preprocessing reads for every line, packed so one item costs one cache miss.
/// 32 bytes, aligned: a record never straddles two cache lines.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct ItemHot {
    pub price_cap: i64,
    pub valid_from: i32,
    pub valid_to: i32,
    pub selfpay_bp: [u16; MAX_SELFPAY_SLOTS],
    pub chrgitm_lv: u8,
    pub fee_category: u8,
    pub sex: u8,
    pub age_min: u8,
    pub age_max: u8,
    pub inpatient_only: bool,
    pub has_diagnoses: bool,
}

const _: () = assert!(std::mem::size_of::<ItemHot>() == 32);

/// One slot of a `CodeIndex`: where a key sits in its string column, a 32-bit tag from its
/// hash, and the item it maps to. 16 bytes, four to a cache line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct Slot {
    tag: u32,
    /// 0 = empty (keys are never empty).
    len: u32,
    off: u32,
    value: u32,
}

/// An empty slot maps to `NO_ITEM`, so a probe that ends on one needs no special case.
const EMPTY_SLOT: Slot = Slot {
    tag: 0,
    len: 0,
    off: 0,
    value: NO_ITEM,
};

/// Codes looked up per pipelined round (see `Catalog::resolve_codes`).
const RESOLVE_BLOCK: usize = 64;

/// An open-addressing hash index over the non-empty, unique keys of a string column (linear
/// probing, at most half full). Unlike a general hash map it exposes the steps of a lookup, so
/// a batch can hash a block of keys and prefetch their slots, then their key bytes and items,
/// before comparing any of them: the cache misses of a block overlap instead of queueing.
#[derive(Debug, Default)]
struct CodeIndex {
    slots: Box<[Slot]>,
    mask: usize,
}

impl CodeIndex {
    /// Indexes every row of `col`; `value(row)` is stored with each key. Empty and duplicate
    /// keys are errors naming `field`.
    fn build(
        field: &str,
        col: &StrColumn,
        mut value: impl FnMut(usize) -> Result<u32, EngineError>,
    ) -> Result<Self, EngineError> {
        let size = col.len().saturating_mul(2).max(8).next_power_of_two();
        let mut index = Self {
            slots: vec![EMPTY_SLOT; size].into_boxed_slice(),
            mask: size - 1,
        };
        let data = col.bytes();
        for i in 0..col.len() {
            let (off, len) = col.span(i);
            let key = col.at_span(off, len).as_bytes();
            if key.is_empty() {
                return Err(EngineError::column(field, &format!("row {i} is empty")));
            }
            let h = key_hash(key);
            let at = index.find_slot(data, h, key);
            if index.slots[at].len != 0 {
                let shown = col.at_span(off, len);
                return Err(EngineError::column(
                    field,
                    &format!("row {i}: duplicate {shown}"),
                ));
            }
            index.slots[at] = Slot {
                tag: tag_of(h),
                len,
                off,
                value: value(i)?,
            };
        }
        Ok(index)
    }

    #[inline(always)]
    fn home(&self, h: u64) -> usize {
        h as usize & self.mask
    }

    /// The slot holding `key`, or the empty slot that ends its probe.
    #[inline]
    fn find_slot(&self, data: &[u8], h: u64, key: &[u8]) -> usize {
        self.probe_from(data, self.home(h), tag_of(h), key)
    }

    #[inline]
    fn probe_from(&self, data: &[u8], mut at: usize, tag: u32, key: &[u8]) -> usize {
        loop {
            let s = &self.slots[at];
            if s.len == 0 || (s.tag == tag && same_key(slot_key(data, s), key)) {
                return at;
            }
            at = (at + 1) & self.mask;
        }
    }

    /// The first slot from `key`'s home that may hold it (tag and length match) or ends the
    /// probe: where the key's bytes are to be compared. Reads slots only.
    #[inline(always)]
    fn candidate(&self, h: u64, len: usize) -> usize {
        let tag = tag_of(h);
        let mut at = self.home(h);
        loop {
            let s = &self.slots[at];
            if s.len == 0 || (s.tag == tag && s.len as usize == len) {
                return at;
            }
            at = (at + 1) & self.mask;
        }
    }

    /// The value of `key`, or `NO_ITEM`.
    #[inline]
    fn get(&self, data: &[u8], key: &[u8]) -> u32 {
        self.slots[self.find_slot(data, key_hash(key), key)].value
    }

    fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }
}

#[inline(always)]
fn tag_of(h: u64) -> u32 {
    (h >> 32) as u32
}

#[inline(always)]
fn slot_key<'d>(data: &'d [u8], s: &Slot) -> &'d [u8] {
    &data[s.off as usize..s.off as usize + s.len as usize]
}

/// A code to resolve in a batch: an insurance code (looked up in the catalog) or a hospital
/// code (mapped through the 对照 table).
#[derive(Debug, Clone, Copy)]
pub struct CodeQuery<'a> {
    pub key: &'a [u8],
    pub insurance: bool,
}

/// An immutable catalog version with its mappings.
#[derive(Debug)]
pub struct Catalog {
    pub version: i64,
    code: StrColumn,
    name: DictColumn,
    spec: DictColumn,
    dosage_form: DictColumn,
    manufacturer: DictColumn,
    diagnoses: DictColumn,
    kind: Box<[u8]>,
    hot: Box<[ItemHot]>,
    selfpay_slots: usize,
    selfpay_psn_types: Box<[u32]>,
    by_code: CodeIndex,
    hosp_codes: StrColumn,
    by_hosp_code: CodeIndex,
    stale_mappings: usize,
}

impl Catalog {
    /// Validates the columns and builds both indexes.
    pub fn build(
        version: i64,
        items: ItemColumns,
        selfpay_psn_types: Vec<u32>,
        hosp_codes: StrColumn,
        ins_codes: StrColumn,
    ) -> Result<Self, EngineError> {
        let n = items.code.len();
        if n >= NO_ITEM as usize {
            return Err(EngineError::column("code", "too many items"));
        }
        check_items(&items, n, selfpay_psn_types.len())?;
        if hosp_codes.len() != ins_codes.len() {
            return Err(EngineError::column(
                "ins_code",
                "length differs from hosp_code",
            ));
        }
        if selfpay_psn_types.len() + 1 > MAX_SELFPAY_SLOTS {
            return Err(EngineError::column(
                "selfpay_psn_types",
                &format!("at most {} person types", MAX_SELFPAY_SLOTS - 1),
            ));
        }
        let by_code = CodeIndex::build("code", &items.code, |i| Ok(i as u32))?;
        let mut stale_mappings = 0;
        let by_hosp_code = CodeIndex::build("hosp_code", &hosp_codes, |i| {
            let target = by_code.get(items.code.bytes(), ins_codes.get(i).as_bytes());
            stale_mappings += usize::from(target == NO_ITEM);
            Ok(target)
        })?;
        let slots = items.selfpay_slots;
        let hot = (0..n)
            .map(|i| {
                let mut selfpay_bp = [0u16; MAX_SELFPAY_SLOTS];
                for (k, v) in selfpay_bp
                    .iter_mut()
                    .zip(&items.selfpay_prop_bp[i * slots..(i + 1) * slots])
                {
                    *k = *v as u16; // validated 0..=10000
                }
                ItemHot {
                    price_cap: items.price_cap[i],
                    valid_from: items.valid_from[i],
                    valid_to: items.valid_to[i],
                    selfpay_bp,
                    chrgitm_lv: items.chrgitm_lv[i],
                    fee_category: items.fee_category[i],
                    sex: items.sex[i],
                    age_min: items.age_min[i],
                    age_max: items.age_max[i],
                    inpatient_only: items.inpatient_only[i],
                    // separators alone ("," or " ") name no diagnosis: no limit
                    has_diagnoses: items
                        .diagnoses
                        .get(i)
                        .split(',')
                        .any(|p| !p.trim().is_empty()),
                }
            })
            .collect();
        let ItemColumns {
            code,
            name,
            spec,
            dosage_form,
            manufacturer,
            diagnoses,
            kind,
            ..
        } = items;
        Ok(Self {
            version,
            code,
            name: DictColumn::encode(&name),
            spec: DictColumn::encode(&spec),
            dosage_form: DictColumn::encode(&dosage_form),
            manufacturer: DictColumn::encode(&manufacturer),
            diagnoses: DictColumn::encode(&diagnoses),
            kind: kind.into_boxed_slice(),
            hot,
            selfpay_slots: slots,
            selfpay_psn_types: selfpay_psn_types.into_boxed_slice(),
            by_code,
            hosp_codes,
            by_hosp_code,
            stale_mappings,
        })
    }

    pub fn len(&self) -> usize {
        self.code.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn mapping_count(&self) -> usize {
        self.hosp_codes.len()
    }

    /// Mappings whose insurance code is not in this catalog version (treated as unmapped).
    pub fn stale_mappings(&self) -> usize {
        self.stale_mappings
    }

    /// Item index of an insurance code, or `NO_ITEM`.
    #[inline]
    pub fn lookup(&self, code: &str) -> u32 {
        self.lookup_bytes(code.as_bytes())
    }

    /// `lookup` for raw bytes (fee-line columns are not UTF-8-checked).
    #[inline]
    pub fn lookup_bytes(&self, code: &[u8]) -> u32 {
        self.by_code.get(self.code.bytes(), code)
    }

    /// Item index a hospital code maps to, or `NO_ITEM`.
    #[inline]
    pub fn map_hosp_code(&self, hosp_code: &str) -> u32 {
        self.map_hosp_code_bytes(hosp_code.as_bytes())
    }

    /// `map_hosp_code` for raw bytes.
    #[inline]
    pub fn map_hosp_code_bytes(&self, hosp_code: &[u8]) -> u32 {
        self.by_hosp_code.get(self.hosp_codes.bytes(), hosp_code)
    }

    /// Resolves a batch of codes: `out[k]` is the item of `codes[k]` (`lookup_bytes` for an
    /// insurance code, `map_hosp_code_bytes` for a hospital code), or `NO_ITEM`. Works in
    /// rounds of a block of codes: hash them all and prefetch their home slots; find each
    /// one's candidate slot and prefetch its key bytes and item record; then compare. The
    /// misses of a round overlap, where one lookup at a time waits for each in turn.
    pub fn resolve_codes(&self, codes: &[CodeQuery<'_>], out: &mut [u32]) {
        assert_eq!(codes.len(), out.len(), "one result per code");
        for (codes, out) in codes
            .chunks(RESOLVE_BLOCK)
            .zip(out.chunks_mut(RESOLVE_BLOCK))
        {
            self.resolve_round(codes, out);
        }
    }

    #[inline]
    fn resolve_round(&self, codes: &[CodeQuery<'_>], out: &mut [u32]) {
        let table = |q: &CodeQuery<'_>| {
            if q.insurance {
                (&self.by_code, self.code.bytes())
            } else {
                (&self.by_hosp_code, self.hosp_codes.bytes())
            }
        };
        let mut hashes = [0u64; RESOLVE_BLOCK];
        let hashes = &mut hashes[..codes.len()];
        for (h, q) in hashes.iter_mut().zip(codes) {
            *h = key_hash(q.key);
            let (index, _) = table(q);
            prefetch(&index.slots[index.home(*h)]);
        }
        let mut found = [0usize; RESOLVE_BLOCK];
        let found = &mut found[..codes.len()];
        for ((at, q), &h) in found.iter_mut().zip(codes).zip(hashes.iter()) {
            let (index, data) = table(q);
            *at = index.candidate(h, q.key.len());
            let s = &index.slots[*at];
            prefetch(data.as_ptr().wrapping_add(s.off as usize));
            prefetch(self.hot.as_ptr().wrapping_add(s.value as usize));
        }
        for (((o, q), &h), &at) in out
            .iter_mut()
            .zip(codes)
            .zip(hashes.iter())
            .zip(found.iter())
        {
            let (index, data) = table(q);
            let s = &index.slots[at];
            *o = if s.len == 0 || same_key(slot_key(data, s), q.key) {
                s.value
            } else {
                // a tag and length collision with another key: probe on past it
                index.slots[index.probe_from(data, at, tag_of(h), q.key)].value
            };
        }
    }

    /// Which selfpay column applies to a person type (0 = default).
    pub fn selfpay_slot(&self, psn_type: u32) -> usize {
        self.selfpay_psn_types
            .iter()
            .position(|&p| p == psn_type)
            .map_or(0, |j| j + 1)
    }

    pub fn selfpay_psn_types(&self) -> &[u32] {
        &self.selfpay_psn_types
    }

    pub fn selfpay_slots(&self) -> usize {
        self.selfpay_slots
    }

    /// The packed per-item fields preprocessing reads.
    #[inline]
    pub fn hot(&self, i: usize) -> &ItemHot {
        &self.hot[i]
    }

    pub fn code(&self, i: usize) -> &str {
        self.code.get(i)
    }
    pub fn name(&self, i: usize) -> &str {
        self.name.get(i)
    }
    pub fn spec(&self, i: usize) -> &str {
        self.spec.get(i)
    }
    pub fn dosage_form(&self, i: usize) -> &str {
        self.dosage_form.get(i)
    }
    pub fn manufacturer(&self, i: usize) -> &str {
        self.manufacturer.get(i)
    }
    pub fn kind(&self, i: usize) -> u8 {
        self.kind[i]
    }
    /// Comma-separated ICD-10 prefixes the item is limited to ("" = none).
    #[inline]
    pub fn diagnoses(&self, i: usize) -> &str {
        self.diagnoses.get(i)
    }

    /// Pre-self-pay ratio of item `i` for selfpay column `slot`.
    #[inline]
    pub fn selfpay_bp(&self, i: usize, slot: usize) -> i32 {
        i32::from(self.hot[i].selfpay_bp[slot])
    }

    /// Approximate bytes held by the index, for memory reports.
    pub fn heap_bytes(&self) -> usize {
        let texts = [
            &self.name,
            &self.spec,
            &self.dosage_form,
            &self.manufacturer,
            &self.diagnoses,
        ];
        let strs = self.code.heap_bytes()
            + self.hosp_codes.heap_bytes()
            + texts.iter().map(|c| c.heap_bytes()).sum::<usize>();
        strs + self.kind.len()
            + self.hot.len() * std::mem::size_of::<ItemHot>()
            + self.by_code.heap_bytes()
            + self.by_hosp_code.heap_bytes()
    }
}

/// Hash of a code for the catalog's tables (fixed seed: the same on every machine).
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6d65_6473_6574_746c).hash_one(key)
}

/// Key equality without a library call for the usual short codes.
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let n = a.len();
    if (8..=16).contains(&n) {
        // two overlapping 8-byte words cover the whole key
        let w =
            |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
        return w(a, 0) == w(b, 0) && w(a, n - 8) == w(b, n - 8);
    }
    a == b
}

fn check_items(it: &ItemColumns, n: usize, n_psn_types: usize) -> Result<(), EngineError> {
    let len_check = |field: &str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(EngineError::column(
                field,
                &format!("has {len} rows, code has {n}"),
            ))
        }
    };
    len_check("name", it.name.len())?;
    len_check("spec", it.spec.len())?;
    len_check("dosage_form", it.dosage_form.len())?;
    len_check("manufacturer", it.manufacturer.len())?;
    len_check("kind", it.kind.len())?;
    len_check("chrgitm_lv", it.chrgitm_lv.len())?;
    len_check("fee_category", it.fee_category.len())?;
    len_check("price_cap", it.price_cap.len())?;
    len_check("inpatient_only", it.inpatient_only.len())?;
    len_check("sex", it.sex.len())?;
    len_check("age_min", it.age_min.len())?;
    len_check("age_max", it.age_max.len())?;
    len_check("diagnoses", it.diagnoses.len())?;
    len_check("valid_from", it.valid_from.len())?;
    len_check("valid_to", it.valid_to.len())?;
    if it.selfpay_slots != n_psn_types + 1 {
        return Err(EngineError::column(
            "selfpay_prop_bp",
            &format!(
                "needs {} columns (default + one per selfpay_psn_types)",
                n_psn_types + 1
            ),
        ));
    }
    if it.selfpay_prop_bp.len() != n * it.selfpay_slots {
        return Err(EngineError::column(
            "selfpay_prop_bp",
            "row count differs from code",
        ));
    }
    let row_err = |field: &str, i: usize, reason: &str| {
        Err(EngineError::column(field, &format!("row {i}: {reason}")))
    };
    for i in 0..n {
        if !(1..=KIND_MAX).contains(&it.kind[i]) {
            return row_err("kind", i, "must be 1..6");
        }
        if !(1..=3).contains(&it.chrgitm_lv[i]) {
            return row_err("chrgitm_lv", i, "must be 1, 2 or 3");
        }
        if !(1..N_CATEGORIES as u8).contains(&it.fee_category[i]) {
            return row_err("fee_category", i, "must be 1..14");
        }
        if it.price_cap[i] < 0 {
            return row_err("price_cap", i, "negative");
        }
        if it.sex[i] > 2 {
            return row_err("sex", i, "must be 0, 1 or 2");
        }
        if it.age_min[i] > it.age_max[i] {
            return row_err("age_min", i, "above age_max");
        }
        if it.valid_to[i] != 0 && it.valid_from[i] > it.valid_to[i] {
            return row_err("valid_from", i, "after valid_to");
        }
    }
    if let Some(p) = it
        .selfpay_prop_bp
        .iter()
        .position(|&r| !(0..=10_000).contains(&r))
    {
        return row_err("selfpay_prop_bp", p / it.selfpay_slots, "must be 0..=10000");
    }
    Ok(())
}

/// The catalog in use, swappable as a whole: readers take an `Arc` snapshot and keep it for
/// the length of their call, so a swap never changes a computation half-way.
pub struct CatalogSlot {
    current: ArcSwap<Catalog>,
}

impl CatalogSlot {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self {
            current: ArcSwap::new(catalog),
        }
    }

    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Installs `next` and returns the version it replaced.
    pub fn swap(&self, next: Arc<Catalog>) -> Arc<Catalog> {
        self.current.swap(next)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small catalog for unit tests: (code, class, category, cap, selfpay bp).
    pub(crate) fn small(rows: &[(&str, u8, u8, i64, i32)]) -> Catalog {
        let items = small_columns(rows);
        let codes: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let hosp: Vec<String> = codes.iter().map(|c| format!("H-{c}")).collect();
        Catalog::build(
            1,
            items,
            vec![],
            StrColumn::from_strs(&hosp),
            StrColumn::from_strs(&codes),
        )
        .unwrap()
    }

    pub(crate) fn small_columns(rows: &[(&str, u8, u8, i64, i32)]) -> ItemColumns {
        let n = rows.len();
        let codes: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let empty = StrColumn::from_strs(&vec![""; n]);
        ItemColumns {
            code: StrColumn::from_strs(&codes),
            name: StrColumn::from_strs(&codes),
            spec: empty.clone(),
            dosage_form: empty.clone(),
            manufacturer: empty.clone(),
            kind: vec![1; n],
            chrgitm_lv: rows.iter().map(|r| r.1).collect(),
            fee_category: rows.iter().map(|r| r.2).collect(),
            price_cap: rows.iter().map(|r| r.3).collect(),
            selfpay_prop_bp: rows.iter().map(|r| r.4).collect(),
            selfpay_slots: 1,
            inpatient_only: vec![false; n],
            sex: vec![0; n],
            age_min: vec![0; n],
            age_max: vec![255; n],
            diagnoses: empty,
            valid_from: vec![0; n],
            valid_to: vec![0; n],
        }
    }

    #[test]
    fn lookup_and_mapping() {
        let c = small(&[("X01", 1, 9, 0, 0), ("X02", 2, 9, 500, 1000)]);
        assert_eq!(c.lookup("X02"), 1);
        assert_eq!(c.lookup("X03"), NO_ITEM);
        assert_eq!(c.map_hosp_code("H-X01"), 0);
        assert_eq!(c.map_hosp_code("H-none"), NO_ITEM);
        assert_eq!(c.selfpay_bp(1, 0), 1000);
    }

    #[test]
    fn rejects_duplicates_and_bad_values() {
        let mut it = small_columns(&[("A", 1, 9, 0, 0)]);
        it.chrgitm_lv[0] = 4;
        let e = Catalog::build(1, it, vec![], StrColumn::default(), StrColumn::default());
        assert!(matches!(e, Err(EngineError::Column { ref field, .. }) if field == "chrgitm_lv"));
        let mut dup2 = small_columns(&[("A", 1, 9, 0, 0), ("B", 1, 9, 0, 0)]);
        dup2.code = StrColumn::from_strs(&["A", "A"]);
        let e = Catalog::build(1, dup2, vec![], StrColumn::default(), StrColumn::default());
        assert!(matches!(e, Err(EngineError::Column { ref field, .. }) if field == "code"));
    }

    #[test]
    fn slot_swaps_whole_versions() {
        let slot = CatalogSlot::new(Arc::new(small(&[("A", 1, 9, 0, 0)])));
        let before = slot.load();
        let mut next = small(&[("B", 1, 9, 0, 0)]);
        next.version = 2;
        slot.swap(Arc::new(next));
        assert_eq!(before.lookup("A"), 0);
        assert_eq!(slot.load().version, 2);
        assert_eq!(slot.load().lookup("A"), NO_ITEM);
    }
}
