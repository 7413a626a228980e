//! Fee preprocessing (the 2204 output): per line, split the amount into fully self-paid,
//! above the price cap, pre-self-paid and in-scope parts, and sum them per visit and per
//! fee category. The line identity `amount = fulamt + overlmt + preselfpay + inscp` holds
//! exactly for every line, by construction (`inscp` is what remains).

use crate::catalog::{Catalog, CodeQuery, NO_ITEM, N_CATEGORIES};
use crate::columns::{prefetch_rows, StrView};
use crate::error::EngineError;
use crate::rounding::{round_bp, RoundMode};

/// Quantities are in 1/10_000 units.
pub const CNT_SCALE: i64 = 10_000;
// Line products divide by CNT_SCALE with `round_bp`, which divides by BP: keep them equal.
const _: () = assert!(CNT_SCALE == crate::rounding::BP);

/// Why a line is (partly) not in scope; bit values are part of the Python API.
pub mod flags {
    pub const UNMAPPED: u16 = 1;
    pub const CLASS_C: u16 = 2;
    pub const RESTRICT_INPATIENT: u16 = 4;
    pub const RESTRICT_SEX: u16 = 8;
    pub const RESTRICT_AGE: u16 = 16;
    pub const RESTRICT_DIAGNOSIS: u16 = 32;
    pub const OUTSIDE_VALIDITY: u16 = 64;
    pub const HOSP_SELFPAY: u16 = 128;
    pub const OVER_PRICE_CAP: u16 = 256;
    pub const PRESELFPAY: u16 = 512;
    pub const APPROVED: u16 = 1024;
    /// Any of these makes the whole line fully self-paid.
    pub const SELF_PAY: u16 = CLASS_C
        | RESTRICT_INPATIENT
        | RESTRICT_SEX
        | RESTRICT_AGE
        | RESTRICT_DIAGNOSIS
        | OUTSIDE_VALIDITY
        | HOSP_SELFPAY;
}

/// Treatment code for inpatients (the only one inpatient-only items are in scope for).
pub const TREATMENT_INPATIENT: u8 = 2;

/// The fee lines of one or many visits, as columns.
pub struct Lines<'a> {
    pub medins_list_codg: StrView<'a>,
    /// Insurance code sent by the HIS; empty (or no column) = the hospital code's mapping.
    pub med_list_codg: Option<StrView<'a>>,
    pub cnt: &'a [i64],
    pub pric: &'a [i64],
    pub det_item_fee_sumamt: &'a [i64],
    pub hosp_appr_flag: &'a [i64],
    /// yyyymmdd; 0 = the visit date.
    pub fee_date: &'a [i64],
    /// Index of each line's visit; empty = every line belongs to visit 0.
    pub visit: &'a [i64],
}

/// What preprocessing needs to know about a visit.
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(name = "Visit", module = "engine_rs", frozen, get_all)
)]
#[derive(Debug, Clone, Default)]
pub struct VisitCtx {
    pub treatment: u8,
    pub psn_type: u32,
    pub sex: u8,
    pub age: u32,
    /// yyyymmdd
    pub date: i32,
    pub diagnoses: Vec<String>,
}

/// Per-line results, as columns.
#[derive(Debug, Default, Clone)]
pub struct LineResults {
    /// Catalog index, -1 when unmapped.
    pub item: Vec<i64>,
    /// 0 when unmapped.
    pub chrgitm_lv: Vec<u8>,
    pub fee_category: Vec<u8>,
    pub fulamt_ownpay_amt: Vec<i64>,
    pub overlmt_amt: Vec<i64>,
    pub preselfpay_amt: Vec<i64>,
    pub inscp_scp_amt: Vec<i64>,
    pub flags: Vec<u16>,
}

/// The preprocessing sums of one visit (what center mode sends to the center);
/// `by_category[c] = [total, fulamt, overlmt, preselfpay, inscp]`, category 0 = no item.
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(name = "Summary", module = "engine_rs", frozen, get_all)
)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub medfee_sumamt: i64,
    pub fulamt_ownpay_amt: i64,
    pub overlmt_amt: i64,
    pub preselfpay_amt: i64,
    pub inscp_scp_amt: i64,
    pub line_count: i64,
    pub by_category: [[i64; 5]; N_CATEGORIES],
}

/// The sums of every visit of a batch, laid out for handing to numpy without copies.
///
/// Category sums are kept in long form, one row per visit and fee category that has lines
/// (ordered by visit, then category): a batch of 100,000 outpatient visits touches a few
/// categories each, where a dense visits x 15 x 5 cube would write 60 MB of mostly zeros.
#[derive(Debug, Clone)]
pub struct Summaries {
    /// Per visit: medfee_sumamt, fulamt_ownpay_amt, overlmt_amt, preselfpay_amt,
    /// inscp_scp_amt, line_count.
    pub totals: Vec<[i64; 6]>,
    pub category_visit: Vec<i64>,
    pub category: Vec<i64>,
    /// Row-major rows x [total, fulamt, overlmt, preselfpay, inscp].
    pub category_sums: Vec<i64>,
    /// The visit whose category sums are being accumulated in `scratch`.
    open: usize,
    scratch: [[i64; 5]; N_CATEGORIES],
    touched: u16,
    /// While true (lines added by `add_within_bounds`), a visit's totals are not summed per
    /// line but derived from its category rows when it is flushed, with `pending_lines`.
    derive_totals: bool,
    pending_lines: i64,
    unsorted: bool,
}

/// No visit is being accumulated.
const NONE_OPEN: usize = usize::MAX;

impl Summaries {
    fn new(visits: usize, lines: usize) -> Self {
        // at most one row per line, and at most one per visit and category
        let rows = lines.min(visits.saturating_mul(N_CATEGORIES));
        Self {
            totals: vec![[0; 6]; visits],
            category_visit: Vec::with_capacity(rows),
            category: Vec::with_capacity(rows),
            category_sums: Vec::with_capacity(rows * 5),
            open: NONE_OPEN,
            scratch: [[0; 5]; N_CATEGORIES],
            touched: 0,
            derive_totals: true,
            pending_lines: 0,
            unsorted: false,
        }
    }

    /// Adds a line whose visit total may overflow: checked against the visit's full total.
    /// Call `stop_deriving` before the first such line.
    fn add(
        &mut self,
        line: usize,
        v: usize,
        cat: usize,
        parts: [i64; 5],
    ) -> Result<(), EngineError> {
        debug_assert!(!self.derive_totals);
        self.open_visit(v);
        let t = &mut self.totals[v];
        for k in 0..5 {
            t[k] = t[k].checked_add(parts[k]).ok_or_else(|| {
                EngineError::line(line, "det_item_fee_sumamt", "visit total overflows i64")
            })?;
        }
        t[5] += 1;
        self.add_category(cat, parts);
        Ok(())
    }

    /// `add` for a line when the amounts of every line so far sum within i64 (so no visit
    /// total can overflow): only its category row is summed.
    #[inline(always)]
    fn add_within_bounds(&mut self, v: usize, cat: usize, parts: [i64; 5]) {
        debug_assert!(self.derive_totals);
        self.open_visit(v);
        self.pending_lines += 1;
        self.add_category(cat, parts);
    }

    /// Sums the open visit's category rows so far into its totals; from here on lines are
    /// added by `add`.
    fn stop_deriving(&mut self) {
        if self.open != NONE_OPEN {
            let mut sum = [0i64; 6];
            for row in &self.scratch {
                for (s, p) in sum.iter_mut().zip(row) {
                    *s += p; // bounded by the amounts so far
                }
            }
            sum[5] = std::mem::take(&mut self.pending_lines);
            for (t, s) in self.totals[self.open].iter_mut().zip(sum) {
                *t += s;
            }
        }
        self.derive_totals = false;
    }

    #[inline(always)]
    fn open_visit(&mut self, v: usize) {
        if v != self.open {
            self.switch_visit(v);
        }
    }

    #[inline(never)]
    fn switch_visit(&mut self, v: usize) {
        self.flush();
        self.unsorted |= self.open != NONE_OPEN && v < self.open;
        self.open = v;
    }

    /// Category sums are bounded by the visit totals, which the callers have checked.
    #[inline(always)]
    fn add_category(&mut self, cat: usize, parts: [i64; 5]) {
        for (s, p) in self.scratch[cat].iter_mut().zip(parts) {
            *s += p;
        }
        self.touched |= 1 << cat;
    }

    /// Emits the open visit's categories as rows (and, while deriving, adds them up into its
    /// totals).
    fn flush(&mut self) {
        let mut sum = [0i64; 5];
        let open = self.open as i64;
        while self.touched != 0 {
            let c = self.touched.trailing_zeros() as usize;
            self.touched &= self.touched - 1;
            let row = std::mem::take(&mut self.scratch[c]);
            for (s, p) in sum.iter_mut().zip(row) {
                *s += p; // bounded by the amounts so far
            }
            self.category_visit.push(open);
            self.category.push(c as i64);
            self.category_sums.extend_from_slice(&row);
        }
        if self.derive_totals && self.open != NONE_OPEN {
            let t = &mut self.totals[self.open];
            for (t, s) in t.iter_mut().zip(sum) {
                *t += s;
            }
            t[5] += std::mem::take(&mut self.pending_lines);
        }
    }

    /// Closes the batch; lines that were not grouped by visit leave several rows for one
    /// visit and category, merged here.
    fn finish(&mut self) {
        self.flush();
        self.open = NONE_OPEN;
        if !self.unsorted {
            return;
        }
        let mut order: Vec<usize> = (0..self.category.len()).collect();
        order.sort_by_key(|&r| (self.category_visit[r], self.category[r]));
        let (mut visit, mut cat, mut sums) = (Vec::new(), Vec::new(), Vec::<i64>::new());
        for r in order {
            let key = (self.category_visit[r], self.category[r]);
            let row = &self.category_sums[r * 5..r * 5 + 5];
            if visit.last().copied().zip(cat.last().copied()) == Some(key) {
                let at = sums.len() - 5;
                for (s, p) in sums[at..].iter_mut().zip(row) {
                    *s += p;
                }
            } else {
                visit.push(key.0);
                cat.push(key.1);
                sums.extend_from_slice(row);
            }
        }
        (self.category_visit, self.category, self.category_sums) = (visit, cat, sums);
        self.unsorted = false;
    }

    /// The sums of visit `v`, categories dense.
    pub fn get(&self, v: usize) -> Summary {
        let t = self.totals[v];
        let mut by_category = [[0; 5]; N_CATEGORIES];
        let first = self.category_visit.partition_point(|&x| x < v as i64);
        for r in first..self.category_visit.len() {
            if self.category_visit[r] != v as i64 {
                break;
            }
            by_category[self.category[r] as usize]
                .copy_from_slice(&self.category_sums[r * 5..r * 5 + 5]);
        }
        Summary {
            medfee_sumamt: t[0],
            fulamt_ownpay_amt: t[1],
            overlmt_amt: t[2],
            preselfpay_amt: t[3],
            inscp_scp_amt: t[4],
            line_count: t[5],
            by_category,
        }
    }
}

fn check_len(field: &str, len: usize, n: usize) -> Result<(), EngineError> {
    if len != n {
        return Err(EngineError::column(
            field,
            &format!("has {len} rows, lines have {n}"),
        ));
    }
    Ok(())
}

/// An explicit insurance code that is not in the catalog (reported in line order).
const UNKNOWN_CODE: u32 = NO_ITEM - 1;

/// Lines per block: a block's codes are resolved together (their cache misses overlap, see
/// `Catalog::resolve_codes`), then its lines are split into a small stack buffer.
const BLOCK: usize = 64;

/// Lines per chunk: the pre-pass that proves lines clean runs a chunk at a time, just before
/// the chunk is split, so the split reads its columns from cache.
const CHUNK: usize = 512;

/// Resolves the items of lines `start..start + out.len()`; an insurance code that is not in
/// the catalog becomes `UNKNOWN_CODE`.
fn resolve_block(cat: &Catalog, lines: &Lines<'_>, start: usize, out: &mut [u32]) {
    let none = CodeQuery {
        key: &[],
        insurance: false,
    };
    let mut queries = [none; BLOCK];
    let queries = &mut queries[..out.len()];
    for (k, q) in queries.iter_mut().enumerate() {
        let i = start + k;
        let ins_code = lines.med_list_codg.map_or(&[][..], |c| c.get(i));
        *q = if ins_code.is_empty() {
            CodeQuery {
                key: lines.medins_list_codg.get(i),
                insurance: false,
            }
        } else {
            CodeQuery {
                key: ins_code,
                insurance: true,
            }
        };
    }
    cat.resolve_codes(queries, out);
    for (o, q) in out.iter_mut().zip(queries.iter()) {
        if q.insurance && *o == NO_ITEM {
            *o = UNKNOWN_CODE;
        }
    }
}

/// What splitting a line needs of its visit, packed: read once per line.
#[derive(Debug, Clone, Copy, Default)]
struct VisitHot {
    date: i32,
    age: u32,
    /// The catalog's selfpay column for the visit's person type.
    slot: u8,
    treatment: u8,
    sex: u8,
    has_diagnoses: bool,
}

/// One line's results while a block is in flight (kept small and on the stack).
#[derive(Debug, Clone, Copy, Default)]
struct LineOut {
    item: i64,
    /// total, fulamt, overlmt, preselfpay, inscp
    parts: [i64; 5],
    visit: u32,
    flags: u16,
    chrgitm_lv: u8,
    fee_category: u8,
}

/// Per-call settings and lookups shared by every line.
struct Ctx<'a> {
    cat: &'a Catalog,
    lines: &'a Lines<'a>,
    visits: &'a [VisitCtx],
    hot: &'a [VisitHot],
    tol: i128,
    tolerance_fen: i64,
    mode: RoundMode,
}

impl Ctx<'_> {
    /// Validates line `i` and splits it, given its resolved item `idx`. With `CHECKED` false
    /// the caller has proven (see `plain_chunk`) that every sign, range and visit index is
    /// valid, so only the checks that depend on the catalog and the tolerance remain.
    #[inline]
    fn line<const CHECKED: bool>(&self, i: usize, idx: u32) -> Result<LineOut, EngineError> {
        let lines = self.lines;
        let v = if lines.visit.is_empty() {
            0
        } else {
            lines.visit[i]
        };
        let (cnt, pric, amount) = (lines.cnt[i], lines.pric[i], lines.det_item_fee_sumamt[i]);
        let appr = lines.hosp_appr_flag[i];
        if CHECKED {
            self.check_signs(i, v, cnt, pric, amount, appr)?;
        }
        if !self.within_tolerance(cnt, pric, amount) {
            return Err(self.tolerance_error(i, amount));
        }
        self.split_line(i, idx, v as usize, cnt, pric, amount, appr)
    }

    /// `line::<false>` without an error path, for a chunk proven clean: line `i`'s split and
    /// whether the line is valid. An invalid line (its amount beyond the tolerance, or an
    /// unknown insurance code, split as unmapped) is reported by `first_error`.
    #[inline(always)]
    fn plain_line(&self, i: usize, idx: u32) -> (LineOut, bool) {
        let lines = self.lines;
        let v = if lines.visit.is_empty() {
            0
        } else {
            lines.visit[i] as usize
        };
        let (cnt, pric, amount) = (lines.cnt[i], lines.pric[i], lines.det_item_fee_sumamt[i]);
        let appr = lines.hosp_appr_flag[i];
        let ok = self.within_tolerance(cnt, pric, amount) & (idx != UNKNOWN_CODE);
        (self.split_parts(i, idx, v, cnt, pric, amount, appr), ok)
    }

    /// The error of the first invalid line among lines `start..start + idx.len()`, found by
    /// `plain_line`: the same error `line` reports for it.
    #[cold]
    fn first_error(&self, start: usize, idx: &[u32]) -> EngineError {
        for (k, &j) in idx.iter().enumerate() {
            if let Err(e) = self.line::<false>(start + k, j) {
                return e;
            }
        }
        unreachable!("plain_line found an invalid line that line accepts")
    }

    #[inline]
    fn within_tolerance(&self, cnt: i64, pric: i64, amount: i64) -> bool {
        // both products are non-negative here, so their difference cannot overflow
        match (pric.checked_mul(cnt), amount.checked_mul(CNT_SCALE)) {
            (Some(a), Some(b)) => i128::from((a - b).abs()) <= self.tol,
            _ => {
                let expected = i128::from(pric) * i128::from(cnt);
                (expected - i128::from(amount) * i128::from(CNT_SCALE)).abs() <= self.tol
            }
        }
    }

    #[cold]
    fn tolerance_error(&self, i: usize, amount: i64) -> EngineError {
        let tolerance_fen = self.tolerance_fen;
        EngineError::line(
            i,
            "det_item_fee_sumamt",
            format!("{amount} differs from pric x cnt beyond the tolerance of {tolerance_fen} fen"),
        )
    }

    fn check_signs(
        &self,
        i: usize,
        v: i64,
        cnt: i64,
        pric: i64,
        amount: i64,
        appr: i64,
    ) -> Result<(), EngineError> {
        if v < 0 || v as usize >= self.hot.len() {
            return Err(EngineError::line(
                i,
                "visit",
                format!("{v} is not a visit of the batch"),
            ));
        }
        if cnt < 0 {
            return Err(EngineError::line(i, "cnt", "negative quantity"));
        }
        if pric < 0 {
            return Err(EngineError::line(i, "pric", "negative price"));
        }
        if amount < 0 {
            return Err(EngineError::line(
                i,
                "det_item_fee_sumamt",
                "negative amount",
            ));
        }
        if !(0..=2).contains(&appr) {
            return Err(EngineError::line(i, "hosp_appr_flag", "must be 0, 1 or 2"));
        }
        Ok(())
    }

    /// Splits a validated line into its parts.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn split_line(
        &self,
        i: usize,
        idx: u32,
        v: usize,
        cnt: i64,
        pric: i64,
        amount: i64,
        appr: i64,
    ) -> Result<LineOut, EngineError> {
        if idx == UNKNOWN_CODE {
            let code = self
                .lines
                .med_list_codg
                .map(|c| c.display(i))
                .unwrap_or_default();
            return Err(EngineError::line(
                i,
                "med_list_codg",
                format!("unknown code {code}"),
            ));
        }
        Ok(self.split_parts(i, idx, v, cnt, pric, amount, appr))
    }

    /// Splits a line into its parts; an unknown code is split as unmapped.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn split_parts(
        &self,
        i: usize,
        idx: u32,
        v: usize,
        cnt: i64,
        pric: i64,
        amount: i64,
        appr: i64,
    ) -> LineOut {
        let lines = self.lines;
        let mut o = LineOut {
            visit: v as u32,
            item: -1,
            ..LineOut::default()
        };
        if idx >= UNKNOWN_CODE {
            o.parts = [amount, amount, 0, 0, 0];
            o.flags = flags::UNMAPPED;
            return o;
        }
        let j = idx as usize;
        let ctx = &self.hot[v];
        let it = self.cat.hot(j);
        let mut fl = 0u16;
        if it.chrgitm_lv == 3 {
            fl |= flags::CLASS_C;
        }
        if it.inpatient_only && ctx.treatment != TREATMENT_INPATIENT {
            fl |= flags::RESTRICT_INPATIENT;
        }
        if it.sex != 0 && it.sex != ctx.sex {
            fl |= flags::RESTRICT_SEX;
        }
        if ctx.age < u32::from(it.age_min) || ctx.age > u32::from(it.age_max) {
            fl |= flags::RESTRICT_AGE;
        }
        if it.has_diagnoses
            && (!ctx.has_diagnoses
                || !diagnosis_allowed(self.cat.diagnoses(j), &self.visits[v].diagnoses))
        {
            fl |= if appr == 1 {
                flags::APPROVED
            } else {
                flags::RESTRICT_DIAGNOSIS
            };
        }
        let date = if lines.fee_date[i] != 0 {
            lines.fee_date[i]
        } else {
            i64::from(ctx.date)
        };
        let (from, to) = (i64::from(it.valid_from), i64::from(it.valid_to));
        if (from != 0 && date < from) || (to != 0 && date > to) {
            fl |= flags::OUTSIDE_VALIDITY;
        }
        if appr == 2 {
            fl |= flags::HOSP_SELFPAY;
        }
        o.item = i64::from(idx);
        o.chrgitm_lv = it.chrgitm_lv;
        o.fee_category = it.fee_category;
        if fl & flags::SELF_PAY != 0 {
            o.parts = [amount, amount, 0, 0, 0];
            o.flags = fl;
            return o;
        }
        let cap = it.price_cap;
        let mut overlmt = 0i64;
        if cap > 0 && pric > cap {
            // divided by CNT_SCALE
            let allowed = round_bp(i128::from(cap) * i128::from(cnt), self.mode);
            // allowed < amount here or overlmt is 0; the difference fits in i64
            overlmt = (i128::from(amount) - allowed).max(0) as i64;
            if overlmt > 0 {
                fl |= flags::OVER_PRICE_CAP;
            }
        }
        let capped = amount - overlmt;
        let bp = i128::from(it.selfpay_bp[usize::from(ctx.slot)]);
        let pre = round_bp(i128::from(capped) * bp, self.mode) as i64;
        if pre > 0 {
            fl |= flags::PRESELFPAY;
        }
        o.parts = [amount, 0, overlmt, pre, capped - pre];
        o.flags = fl;
        o
    }
}

/// Preprocesses every line; `visits[lines.visit[i]]` is line i's visit.
/// Returns the per-line results and the sums of every visit. Nothing is partially returned:
/// the first bad line fails the whole batch, naming the line and field.
pub fn preprocess(
    cat: &Catalog,
    lines: &Lines<'_>,
    visits: &[VisitCtx],
    tolerance_fen: i64,
    mode: RoundMode,
) -> Result<(LineResults, Summaries), EngineError> {
    let n = lines.medins_list_codg.len();
    if let Some(c) = lines.med_list_codg {
        check_len("med_list_codg", c.len(), n)?;
    }
    check_len("cnt", lines.cnt.len(), n)?;
    check_len("pric", lines.pric.len(), n)?;
    check_len("det_item_fee_sumamt", lines.det_item_fee_sumamt.len(), n)?;
    check_len("hosp_appr_flag", lines.hosp_appr_flag.len(), n)?;
    check_len("fee_date", lines.fee_date.len(), n)?;
    if !lines.visit.is_empty() {
        check_len("visit", lines.visit.len(), n)?;
    }
    if visits.is_empty() {
        return Err(EngineError::column(
            "visits",
            "at least one visit is needed",
        ));
    }
    if let Some(v) = visits.iter().position(|v| !(1..=3).contains(&v.treatment)) {
        return Err(EngineError::input(v, "treatment", "must be 1, 2 or 3"));
    }
    let hot: Vec<VisitHot> = visits
        .iter()
        .map(|v| VisitHot {
            date: v.date,
            age: v.age,
            slot: cat.selfpay_slot(v.psn_type) as u8, // below MAX_SELFPAY_SLOTS
            treatment: v.treatment,
            sex: v.sex,
            has_diagnoses: !v.diagnoses.is_empty(),
        })
        .collect();
    let ctx = Ctx {
        cat,
        lines,
        visits,
        hot: &hot,
        tol: i128::from(tolerance_fen) * i128::from(CNT_SCALE),
        tolerance_fen,
        mode,
    };
    let mut out = LineResults {
        item: Vec::with_capacity(n),
        chrgitm_lv: Vec::with_capacity(n),
        fee_category: Vec::with_capacity(n),
        fulamt_ownpay_amt: Vec::with_capacity(n),
        overlmt_amt: Vec::with_capacity(n),
        preselfpay_amt: Vec::with_capacity(n),
        inscp_scp_amt: Vec::with_capacity(n),
        flags: Vec::with_capacity(n),
    };
    let mut sums = Summaries::new(visits.len(), n);
    run(&ctx, n, &mut out, &mut sums)?;
    sums.finish();
    Ok((out, sums))
}

/// Runs every line, a chunk at a time. A chunk whose lines are proven clean by
/// `plain_chunk` skips the per-line sign, range and overflow checks; once a chunk is not
/// (a bad value, which fails the batch at its first bad line, or amounts that no longer sum
/// within i64), every later line is checked, so errors are reported exactly as if every line
/// had been.
fn run(
    ctx: &Ctx<'_>,
    n: usize,
    out: &mut LineResults,
    sums: &mut Summaries,
) -> Result<(), EngineError> {
    let mut plain = true;
    let mut total = 0u128;
    let mut start = 0;
    while start < n {
        let end = n.min(start + CHUNK);
        if plain && !plain_chunk(ctx.lines, start..end, ctx.hot.len(), &mut total) {
            plain = false;
            sums.stop_deriving();
        }
        if plain {
            run_chunk::<false>(ctx, start, end, out, sums)?;
        } else {
            run_chunk::<true>(ctx, start, end, out, sums)?;
        }
        start = end;
    }
    Ok(())
}

/// One pass over a chunk's numeric columns, branch-free: true when no line has a negative
/// quantity, price or amount, an approval flag outside 0..=2 or a visit index out of range,
/// and the amounts of every line up to the chunk's end (`total` carries the sum of the
/// earlier chunks) sum within i64, so no visit total can overflow.
fn plain_chunk(
    lines: &Lines<'_>,
    range: std::ops::Range<usize>,
    n_visits: usize,
    total: &mut u128,
) -> bool {
    let cnt = &lines.cnt[range.clone()];
    let pric = &lines.pric[range.clone()];
    let amount = &lines.det_item_fee_sumamt[range.clone()];
    let appr = &lines.hosp_appr_flag[range.clone()];
    // OR of values is negative exactly when one of them is; flags and visit indexes are
    // compared unsigned, so a negative one is out of range too.
    let mut signs = 0i64;
    let mut bad_flag = false;
    let mut sum = 0u128;
    for (((&c, &p), &a), &f) in cnt.iter().zip(pric).zip(amount).zip(appr) {
        signs |= c | p | a;
        bad_flag |= f as u64 > 2;
        sum += u128::from(a as u64); // exact: a chunk is far below 2^64 lines
    }
    let bad_visit = !lines.visit.is_empty()
        && lines.visit[range]
            .iter()
            .fold(false, |b, &v| b | (v as u64 >= n_visits as u64));
    if signs < 0 || bad_flag || bad_visit {
        return false;
    }
    *total += sum;
    *total <= i64::MAX as u128
}

/// Runs lines `start..end` in blocks: resolve the block's items (their lookups overlap),
/// split each line into a small stack buffer, then append the buffer to the output columns.
fn run_chunk<const CHECKED: bool>(
    ctx: &Ctx<'_>,
    start: usize,
    end: usize,
    out: &mut LineResults,
    sums: &mut Summaries,
) -> Result<(), EngineError> {
    let mut idx = [0u32; BLOCK];
    let mut buf = [LineOut::default(); BLOCK];
    let mut start = start;
    while start < end {
        let len = BLOCK.min(end - start);
        prefetch_ahead(ctx.lines, start, len);
        resolve_block(ctx.cat, ctx.lines, start, &mut idx[..len]);
        // Sums are added line by line so an overflowing total is reported at its own line,
        // before any error of a later line of the block.
        if CHECKED {
            for k in 0..len {
                let o = ctx.line::<true>(start + k, idx[k])?;
                sums.add(start + k, o.visit as usize, o.fee_category.into(), o.parts)?;
                buf[k] = o;
            }
        } else {
            let mut ok = true;
            for k in 0..len {
                let (o, valid) = ctx.plain_line(start + k, idx[k]);
                ok &= valid;
                sums.add_within_bounds(o.visit as usize, o.fee_category.into(), o.parts);
                buf[k] = o;
            }
            if !ok {
                return Err(ctx.first_error(start, &idx[..len]));
            }
        }
        let b = &buf[..len];
        out.item.extend(b.iter().map(|o| o.item));
        out.chrgitm_lv.extend(b.iter().map(|o| o.chrgitm_lv));
        out.fee_category.extend(b.iter().map(|o| o.fee_category));
        out.fulamt_ownpay_amt.extend(b.iter().map(|o| o.parts[1]));
        out.overlmt_amt.extend(b.iter().map(|o| o.parts[2]));
        out.preselfpay_amt.extend(b.iter().map(|o| o.parts[3]));
        out.inscp_scp_amt.extend(b.iter().map(|o| o.parts[4]));
        out.flags.extend(b.iter().map(|o| o.flags));
        start += len;
    }
    Ok(())
}

/// Prefetches the input columns of the lines a chunk ahead of block `start..start + len` (the
/// processor's own prefetcher does not keep up with this many streams), and the code bytes
/// of the lines half a chunk ahead, whose offsets were prefetched half a chunk ago.
#[inline]
fn prefetch_ahead(lines: &Lines<'_>, start: usize, len: usize) {
    let (from, to) = (start + CHUNK, start + CHUNK + len);
    for col in [
        lines.cnt,
        lines.pric,
        lines.det_item_fee_sumamt,
        lines.hosp_appr_flag,
        lines.fee_date,
        lines.visit,
    ] {
        prefetch_rows(col, from, to);
    }
    let (near, near_to) = (start + CHUNK / 2, start + CHUNK / 2 + len);
    for codes in [Some(lines.medins_list_codg), lines.med_list_codg]
        .into_iter()
        .flatten()
    {
        codes.prefetch_offsets(from, to);
        codes.prefetch_data(near, near_to);
    }
}

/// True when one of the visit's diagnoses starts with one of the item's allowed prefixes.
fn diagnosis_allowed(prefixes: &str, diagnoses: &[String]) -> bool {
    prefixes
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|p| diagnoses.iter().any(|d| d.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::small;
    use crate::columns::OwnedStrs;

    fn run(
        cat: &Catalog,
        rows: &[(&str, &str, i64, i64, i64, i64)],
        ctx: VisitCtx,
    ) -> Result<(LineResults, Summary), EngineError> {
        let hosp = OwnedStrs::from_strs(&rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let ins = OwnedStrs::from_strs(&rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let cnt: Vec<i64> = rows.iter().map(|r| r.2).collect();
        let pric: Vec<i64> = rows.iter().map(|r| r.3).collect();
        let amt: Vec<i64> = rows.iter().map(|r| r.4).collect();
        let appr: Vec<i64> = rows.iter().map(|r| r.5).collect();
        let dates = vec![0; rows.len()];
        let lines = Lines {
            medins_list_codg: hosp.view(),
            med_list_codg: Some(ins.view()),
            cnt: &cnt,
            pric: &pric,
            det_item_fee_sumamt: &amt,
            hosp_appr_flag: &appr,
            fee_date: &dates,
            visit: &[],
        };
        preprocess(cat, &lines, &[ctx], 1, RoundMode::HalfUp).map(|(r, s)| (r, s.get(0)))
    }

    fn ctx() -> VisitCtx {
        VisitCtx {
            treatment: 2,
            psn_type: 11,
            sex: 1,
            age: 40,
            date: 20260601,
            ..Default::default()
        }
    }

    #[test]
    fn splits_a_line_into_its_four_parts() {
        // class B drug, cap 1000 fen/unit, 10 % pre-self-pay; 3 units at 1200 fen
        let cat = small(&[("B1", 2, 9, 1000, 1000), ("C1", 3, 9, 0, 0)]);
        let (r, s) = run(
            &cat,
            &[
                ("H-B1", "", 3 * CNT_SCALE, 1200, 3600, 0),
                ("H-C1", "", CNT_SCALE, 500, 500, 0),
                ("H-none", "", CNT_SCALE, 700, 700, 0),
            ],
            ctx(),
        )
        .unwrap();
        assert_eq!(r.overlmt_amt[0], 600);
        assert_eq!(r.preselfpay_amt[0], 300);
        assert_eq!(r.inscp_scp_amt[0], 2700);
        assert_eq!(r.fulamt_ownpay_amt[1], 500);
        assert_eq!(r.flags[1], flags::CLASS_C);
        assert_eq!(r.flags[2], flags::UNMAPPED);
        assert_eq!(r.item[2], -1);
        assert_eq!(s.medfee_sumamt, 4800);
        assert_eq!(s.fulamt_ownpay_amt, 1200);
        assert_eq!(s.by_category[9], [4100, 500, 600, 300, 2700]);
        assert_eq!(s.by_category[0], [700, 700, 0, 0, 0]);
    }

    #[test]
    fn worked_example_material_preselfpay() {
        // Fujian: a 3000-yuan material with a 20 % pre-self-pay share
        let cat = small(&[("M1", 2, 8, 0, 2000)]);
        let (r, _) = run(&cat, &[("", "M1", CNT_SCALE, 300_000, 300_000, 0)], ctx()).unwrap();
        assert_eq!((r.preselfpay_amt[0], r.inscp_scp_amt[0]), (60_000, 240_000));
    }

    #[test]
    fn category_rows_merge_when_lines_are_not_grouped_by_visit() {
        let cat = small(&[("A1", 1, 9, 0, 0), ("B1", 1, 3, 0, 0)]);
        let hosp = OwnedStrs::from_strs(&["H-A1", "H-B1", "H-A1", "H-A1"]);
        let (cnt, pric) = (vec![CNT_SCALE; 4], vec![100, 200, 300, 400]);
        let (appr, dates) = (vec![0; 4], vec![0; 4]);
        let lines = Lines {
            medins_list_codg: hosp.view(),
            med_list_codg: None,
            cnt: &cnt,
            pric: &pric,
            det_item_fee_sumamt: &pric,
            hosp_appr_flag: &appr,
            fee_date: &dates,
            visit: &[1, 0, 1, 0],
        };
        let visits = vec![ctx(), ctx()];
        let (_, s) = preprocess(&cat, &lines, &visits, 1, RoundMode::HalfUp).unwrap();
        assert_eq!(s.category_visit, vec![0, 0, 1]);
        assert_eq!(s.category, vec![3, 9, 9]);
        assert_eq!(s.category_sums[5], 400);
        assert_eq!(s.category_sums[10], 400);
        assert_eq!(s.get(0).by_category[3][0], 200);
        assert_eq!(s.get(1).medfee_sumamt, 400);
    }

    #[test]
    fn names_bad_lines() {
        let cat = small(&[("A1", 1, 9, 0, 0)]);
        let e = run(
            &cat,
            &[
                ("H-A1", "", CNT_SCALE, 100, 100, 0),
                ("H-A1", "", -1, 100, 0, 0),
            ],
            ctx(),
        );
        assert!(matches!(
            e,
            Err(EngineError::Line {
                line: 1,
                field: "cnt",
                ..
            })
        ));
        let e = run(&cat, &[("H-A1", "", 2 * CNT_SCALE, 100, 100, 0)], ctx());
        assert!(matches!(
            e,
            Err(EngineError::Line {
                line: 0,
                field: "det_item_fee_sumamt",
                ..
            })
        ));
        let e = run(&cat, &[("", "ZZ", CNT_SCALE, 100, 100, 0)], ctx());
        assert!(matches!(
            e,
            Err(EngineError::Line {
                line: 0,
                field: "med_list_codg",
                ..
            })
        ));
        let big = i64::MAX / 2 + 1;
        let e = run(
            &cat,
            &[
                ("", "A1", CNT_SCALE, big, big, 0),
                ("", "A1", CNT_SCALE, big, big, 0),
            ],
            ctx(),
        );
        assert!(matches!(e, Err(EngineError::Line { line: 1, .. })));
        let e = run(&cat, &[("", "A1", CNT_SCALE, 100, 100, 3)], ctx());
        assert!(matches!(
            e,
            Err(EngineError::Line {
                field: "hosp_appr_flag",
                ..
            })
        ));
    }

    /// `n` lines of item A1 (one unit each at `pric[i]`) over the given visits.
    fn batch(
        cat: &Catalog,
        pric: &[i64],
        cnt: &[i64],
        visit: &[i64],
        n_visits: usize,
    ) -> Result<(LineResults, Summaries), EngineError> {
        let n = pric.len();
        let hosp = OwnedStrs::from_strs(&vec!["H-A1"; n]);
        let (appr, dates) = (vec![0; n], vec![0; n]);
        let lines = Lines {
            medins_list_codg: hosp.view(),
            med_list_codg: None,
            cnt,
            pric,
            det_item_fee_sumamt: pric,
            hosp_appr_flag: &appr,
            fee_date: &dates,
            visit,
        };
        preprocess(cat, &lines, &vec![ctx(); n_visits], 1, RoundMode::HalfUp)
    }

    #[test]
    fn a_bad_line_in_a_later_chunk_is_named() {
        let cat = small(&[("A1", 1, 9, 0, 0)]);
        let n = 3 * CHUNK + 7;
        let pric = vec![100; n];
        let mut cnt = vec![CNT_SCALE; n];
        let visit: Vec<i64> = (0..n as i64).map(|i| i / 10).collect();
        cnt[2 * CHUNK + 5] = -1;
        let e = batch(&cat, &pric, &cnt, &visit, n / 10 + 1);
        assert!(matches!(
            e,
            Err(EngineError::Line { line, field: "cnt", .. }) if line == 2 * CHUNK + 5
        ));
        cnt[2 * CHUNK + 5] = CNT_SCALE;
        let (r, s) = batch(&cat, &pric, &cnt, &visit, n / 10 + 1).unwrap();
        assert_eq!(r.inscp_scp_amt.len(), n);
        assert_eq!(s.totals.iter().map(|t| t[5]).sum::<i64>(), n as i64);
        assert!(s.totals.iter().all(|t| t[0] == 100 * t[5]));
    }

    #[test]
    fn batch_total_beyond_i64_switches_to_checked_sums() {
        let cat = small(&[("A1", 1, 9, 0, 0)]);
        let big = i64::MAX / 2 + 1;
        let n = 3 * CHUNK;
        // visit 0: a big line, then small ones into the next chunk; visit 1 (in the last
        // chunk): a big line. The batch sums beyond i64, no visit does.
        let mut pric = vec![100; n];
        pric[0] = big;
        pric[2 * CHUNK + 1] = big;
        let cnt = vec![CNT_SCALE; n];
        let visit: Vec<i64> = (0..n).map(|i| i64::from(i > 2 * CHUNK)).collect();
        let (_, s) = batch(&cat, &pric, &cnt, &visit, 2).unwrap();
        let small_lines = (2 * CHUNK) as i64;
        assert_eq!(s.totals[0][0], big + 100 * small_lines);
        assert_eq!(s.totals[0][5], small_lines + 1);
        assert_eq!(s.totals[1][0], big + 100 * (CHUNK as i64 - 2));
        assert_eq!(s.get(0).by_category[9][0], s.totals[0][0]);
        assert_eq!(
            (s.category_visit.clone(), s.category.clone()),
            (vec![0, 1], vec![9, 9])
        );
        // one visit across the switch: its total overflows at its own line
        let visit = vec![0; n];
        let e = batch(&cat, &pric, &cnt, &visit, 1);
        assert!(matches!(
            e,
            Err(EngineError::Line { line, field: "det_item_fee_sumamt", .. })
                if line == 2 * CHUNK + 1
        ));
    }

    #[test]
    fn tolerance_allows_rounded_line_amounts() {
        let cat = small(&[("A1", 1, 9, 0, 0)]);
        // 3.3333 units at 300 fen = 999.99 fen, billed 1000
        assert!(run(&cat, &[("H-A1", "", 33_333, 300, 1000, 0)], ctx()).is_ok());
    }
}
