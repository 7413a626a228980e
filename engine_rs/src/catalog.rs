//! The catalog index: insurance items and hospital-to-insurance mappings (对照) in columns,
//! with constant-time lookup by code.
//!
//! Built once from bulk columns and then immutable, so a front-end can build the next version
//! beside the current one and swap the whole index (see `CatalogSlot`) while calls are in flight.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hashbrown::HashTable;

use crate::columns::{DictColumn, StrColumn};
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

/// A hash-table entry: a key's place in a string column and the value it maps to.
#[derive(Debug, Clone, Copy)]
struct KeyEntry {
    off: u32,
    len: u32,
    value: u32,
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
    by_code: HashTable<KeyEntry>,
    hosp_codes: StrColumn,
    by_hosp_code: HashTable<KeyEntry>,
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
        let by_code = index_keys("code", &items.code, |i| Ok(i as u32))?;
        let mut stale_mappings = 0;
        let by_hosp_code = index_keys("hosp_code", &hosp_codes, |i| {
            let ic = ins_codes.get(i).as_bytes();
            let target = by_code
                .find(key_hash(ic), |e| {
                    same_key(items.code.at_span(e.off, e.len).as_bytes(), ic)
                })
                .map_or(NO_ITEM, |e| e.value);
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
        let h = key_hash(code);
        self.by_code
            .find(h, |e| {
                same_key(self.code.at_span(e.off, e.len).as_bytes(), code)
            })
            .map_or(NO_ITEM, |e| e.value)
    }

    /// Item index a hospital code maps to, or `NO_ITEM`.
    #[inline]
    pub fn map_hosp_code(&self, hosp_code: &str) -> u32 {
        self.map_hosp_code_bytes(hosp_code.as_bytes())
    }

    /// `map_hosp_code` for raw bytes.
    #[inline]
    pub fn map_hosp_code_bytes(&self, hosp_code: &[u8]) -> u32 {
        let h = key_hash(hosp_code);
        self.by_hosp_code
            .find(h, |e| {
                same_key(self.hosp_codes.at_span(e.off, e.len).as_bytes(), hosp_code)
            })
            .map_or(NO_ITEM, |e| e.value)
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
        let entry = std::mem::size_of::<KeyEntry>() + 1;
        strs + self.kind.len()
            + self.hot.len() * std::mem::size_of::<ItemHot>()
            + (self.by_code.capacity() + self.by_hosp_code.capacity()) * entry
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

/// A hash index over a string column's non-empty, unique keys; `value(row)` is stored with
/// each key.
fn index_keys(
    field: &str,
    col: &StrColumn,
    mut value: impl FnMut(usize) -> Result<u32, EngineError>,
) -> Result<HashTable<KeyEntry>, EngineError> {
    let mut table: HashTable<KeyEntry> = HashTable::with_capacity(col.len());
    for i in 0..col.len() {
        let (off, len) = col.span(i);
        let key = col.at_span(off, len).as_bytes();
        if key.is_empty() {
            return Err(EngineError::column(field, &format!("row {i} is empty")));
        }
        let h = key_hash(key);
        if table
            .find(h, |e| same_key(col.at_span(e.off, e.len).as_bytes(), key))
            .is_some()
        {
            let shown = col.at_span(off, len);
            return Err(EngineError::column(
                field,
                &format!("row {i}: duplicate {shown}"),
            ));
        }
        let entry = KeyEntry {
            off,
            len,
            value: value(i)?,
        };
        table.insert_unique(h, entry, |e| key_hash(col.at_span(e.off, e.len).as_bytes()));
    }
    Ok(table)
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
