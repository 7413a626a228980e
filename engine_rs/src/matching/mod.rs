//! Catalog matching (目录对照 candidates): for a hospital item (name, spec, dosage form,
//! manufacturer) propose the insurance items it most likely is, with scores in [0, 1].
//!
//! Real catalogs hold the same generic name in many specs from many makers, so the work is
//! done per distinct name: an inverted index of name n-grams (and of pinyin initials, for
//! integrators who type `AMXLJN`) proposes candidate names from their rarest grams, every
//! candidate name is rescored exactly, and only the best names are expanded to their items,
//! which are ranked on name, spec, dosage form and manufacturer together. Per item the index
//! keeps four small ids; texts are normalised once per distinct name, spec and maker.

mod normalize;
mod spec;

use std::collections::HashMap;
use std::sync::Arc;

use crate::catalog::Catalog;
use normalize::{
    char_grams, dice, form_of_field, initial_grams, initials, looks_like_initials, maker_grams,
    maker_name_key, split_form, split_name, split_salt, Form, NO_FORM,
};

/// Weights of the four fields in a score; a field the query leaves empty is left out, so a
/// perfect match on what the query gives scores 1.
const W_NAME: f32 = 0.60;
const W_SPEC: f32 = 0.22;
const W_FORM: f32 = 0.06;
const W_MAKER: f32 = 0.12;
/// Share of the name score that bracketed notes (`(乳胶)`, `(急诊)`) decide.
const AUX_SHARE: f32 = 0.15;
/// Name similarity factor when the salt differs (`盐酸` / `硫酸`) or one side has none.
const SALT_OTHER: f32 = 0.85;
const SALT_MISSING: f32 = 0.92;
/// Candidate names below this name similarity are not worth proposing.
const MIN_NAME_SIM: f32 = 0.3;
/// Grams whose postings would push a query past this many lookups are skipped for
/// candidate generation (they still count in rescoring): `注射`, `胶囊`, `一次`.
const POSTING_BUDGET: usize = 60_000;
/// Query grams used for candidate generation at most (keeps counters in a u8).
const MAX_QUERY_GRAMS: usize = 64;
/// Candidate names rescored exactly per query.
const MAX_CANDIDATE_NAMES: usize = 400;
/// Query text beyond this many bytes is ignored.
const MAX_QUERY_BYTES: usize = 512;
/// Largest k a query may ask for.
pub const MAX_K: usize = 1000;

/// One hospital item to match.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    pub name: &'a str,
    pub spec: &'a str,
    pub dosage_form: &'a str,
    pub manufacturer: &'a str,
}

/// A proposed catalog item and its score in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub item: u32,
    pub score: f32,
}

/// Variable-length per-entity data in one buffer: entry i is `data[offs[i]..offs[i+1]]`.
#[derive(Debug, Default)]
struct Csr<T> {
    data: Vec<T>,
    offs: Vec<u32>,
}

impl<T: Copy> Csr<T> {
    fn new() -> Self {
        Self {
            data: Vec::new(),
            offs: vec![0],
        }
    }
    /// Closes the entry whose elements were pushed to `data` since the last close.
    fn close(&mut self) {
        self.offs
            .push(u32::try_from(self.data.len()).expect("matcher index under 4 G entries"));
    }
    #[inline]
    fn get(&self, i: usize) -> &[T] {
        &self.data[self.offs[i] as usize..self.offs[i + 1] as usize]
    }
    fn shrink(&mut self) {
        self.data.shrink_to_fit();
        self.offs.shrink_to_fit();
    }
    fn heap_bytes(&self) -> usize {
        self.data.capacity() * std::mem::size_of::<T>() + self.offs.capacity() * 4
    }
}

/// The matching index over one catalog version.
pub struct Matcher {
    catalog: Arc<Catalog>,
    // Per item.
    item_name: Vec<u32>,
    item_spec: Vec<u32>,
    item_maker: Vec<u32>,
    item_form: Vec<Form>,
    // Per distinct name.
    name_items: Csr<u32>,
    stem_grams: Csr<u64>,
    initial_grams: Csr<u64>,
    aux_grams: Csr<u64>,
    name_salt: Vec<u8>,
    name_spec: Csr<u64>,
    // Per distinct spec and maker.
    spec_tokens: Csr<u64>,
    maker_grams: Csr<u64>,
    // Inverted index: gram -> (start, len) in `postings` of name ids.
    grams: HashMap<u64, (u32, u32), foldhash::fast::FixedState>,
    postings: Vec<u32>,
}

/// Reusable per-thread buffers for queries.
pub struct Scratch {
    counts: Vec<u8>,
    touched: Vec<u32>,
    grams: Vec<u64>,
    names: Vec<(f32, u32, f32)>,
    cands: Vec<(u32, u32)>,
    tokens: Vec<u64>,
}

/// What a query contributes, normalised once.
#[derive(Default)]
struct Prepared {
    stem: Vec<u64>,
    salt: u8,
    initials: Vec<u64>,
    aux: Vec<u64>,
    spec: Vec<u64>,
    /// Each bracketed note as (grams, spec tokens), used only when `spec` is empty.
    notes: Vec<(Vec<u64>, Vec<u64>)>,
    maker: Vec<u64>,
    form: Option<Form>,
}

impl Matcher {
    /// Builds the index; O(items) hashing plus normalisation of each distinct text.
    pub fn build(catalog: Arc<Catalog>) -> Self {
        let n = catalog.len();
        let hasher = foldhash::fast::FixedState::with_seed(0x6d61_7463_6869_6e67);
        let mut m = Matcher {
            catalog: catalog.clone(),
            item_name: Vec::with_capacity(n),
            item_spec: Vec::with_capacity(n),
            item_maker: Vec::with_capacity(n),
            item_form: Vec::with_capacity(n),
            name_items: Csr::new(),
            stem_grams: Csr::new(),
            initial_grams: Csr::new(),
            aux_grams: Csr::new(),
            name_salt: Vec::new(),
            name_spec: Csr::new(),
            spec_tokens: Csr::new(),
            maker_grams: Csr::new(),
            grams: HashMap::with_hasher(hasher.clone()),
            postings: Vec::new(),
        };
        let mut names: HashMap<&str, u32, _> = HashMap::with_hasher(hasher.clone());
        let mut specs: HashMap<&str, u32, _> = HashMap::with_hasher(hasher.clone());
        let mut makers: HashMap<&str, u32, _> = HashMap::with_hasher(hasher.clone());
        let mut fields: HashMap<&str, Option<Form>, _> = HashMap::with_hasher(hasher.clone());
        let mut name_form: Vec<Option<Form>> = Vec::new();
        let mut scratch = String::new();
        for i in 0..n {
            let name = catalog.name(i);
            let next = names.len() as u32;
            let name_id = *names.entry(name).or_insert_with(|| {
                let parts = split_name(name);
                let (stem, form) = split_form(&parts.core);
                let (stem, salt) = split_salt(stem);
                char_grams(stem, &mut m.stem_grams.data);
                m.stem_grams.close();
                m.name_salt.push(salt);
                // Integrators type initials of the whole name, notes included.
                scratch.clear();
                scratch.push_str(&initials(&parts.core));
                scratch.push_str(&initials(&parts.aux));
                initial_grams(&scratch, &mut m.initial_grams.data);
                m.initial_grams.close();
                char_grams(&parts.aux, &mut m.aux_grams.data);
                m.aux_grams.close();
                spec::tokens(&parts.spec_text, &mut m.name_spec.data);
                m.name_spec.close();
                name_form.push(form);
                next
            });
            let next = specs.len() as u32;
            let spec_id = *specs.entry(catalog.spec(i)).or_insert_with(|| {
                spec::tokens(catalog.spec(i), &mut m.spec_tokens.data);
                m.spec_tokens.close();
                next
            });
            let next = makers.len() as u32;
            let maker_id = *makers.entry(catalog.manufacturer(i)).or_insert_with(|| {
                maker_grams(catalog.manufacturer(i), &mut m.maker_grams.data);
                m.maker_grams.close();
                next
            });
            let field = *fields
                .entry(catalog.dosage_form(i))
                .or_insert_with(|| form_of_field(catalog.dosage_form(i)));
            // The name's own suffix is the more specific form (`肠溶片` against `片剂`).
            let form = name_form[name_id as usize].or(field).unwrap_or(Form {
                id: NO_FORM,
                family: NO_FORM,
            });
            m.item_name.push(name_id);
            m.item_spec.push(spec_id);
            m.item_maker.push(maker_id);
            m.item_form.push(form);
        }
        let n_names = names.len();
        drop((names, specs, makers, fields));
        m.name_items = group_items(&m.item_name, n_names);
        m.build_postings(n_names);
        for csr in [
            &mut m.stem_grams,
            &mut m.initial_grams,
            &mut m.aux_grams,
            &mut m.name_spec,
            &mut m.spec_tokens,
            &mut m.maker_grams,
        ] {
            csr.shrink();
        }
        m.name_items.shrink();
        m
    }

    /// Two passes over the names' grams: count postings per gram, then fill them.
    fn build_postings(&mut self, n_names: usize) {
        let mut df: HashMap<u64, (u32, u32), _> = HashMap::with_hasher(self.grams.hasher().clone());
        for id in 0..n_names {
            for &g in self
                .stem_grams
                .get(id)
                .iter()
                .chain(self.initial_grams.get(id))
            {
                df.entry(g).or_insert((0, 0)).1 += 1;
            }
        }
        let mut start = 0u32;
        for v in df.values_mut() {
            v.0 = start;
            start += v.1;
        }
        let mut fill: HashMap<u64, u32, _> =
            HashMap::with_capacity_and_hasher(df.len(), self.grams.hasher().clone());
        let mut postings = vec![0u32; start as usize];
        for id in 0..n_names {
            for &g in self
                .stem_grams
                .get(id)
                .iter()
                .chain(self.initial_grams.get(id))
            {
                let (s, _) = df[&g];
                let k = fill.entry(g).or_insert(0);
                postings[(s + *k) as usize] = id as u32;
                *k += 1;
            }
        }
        df.shrink_to_fit();
        self.grams = df;
        self.postings = postings;
    }

    /// Items indexed.
    pub fn len(&self) -> usize {
        self.item_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct names indexed.
    pub fn name_count(&self) -> usize {
        self.name_items.offs.len() - 1
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Approximate bytes the index holds (not counting the catalog it refers to).
    pub fn heap_bytes(&self) -> usize {
        let csr = [
            &self.stem_grams,
            &self.initial_grams,
            &self.aux_grams,
            &self.name_spec,
            &self.spec_tokens,
            &self.maker_grams,
        ]
        .iter()
        .map(|c| c.heap_bytes())
        .sum::<usize>();
        self.item_name.capacity() * 4
            + self.item_spec.capacity() * 4
            + self.item_maker.capacity() * 4
            + self.item_form.capacity() * 2
            + self.name_items.heap_bytes()
            + csr
            + self.grams.capacity() * 17
            + self.postings.capacity() * 4
    }

    /// Buffers for `search`; one per thread, reused across queries.
    pub fn scratch(&self) -> Scratch {
        Scratch {
            counts: vec![0; self.name_count()],
            touched: Vec::new(),
            grams: Vec::new(),
            names: Vec::new(),
            cands: Vec::new(),
            tokens: Vec::new(),
        }
    }

    /// The best `k` items for `q` (at most `MAX_K`), best first; ties go to the lower item
    /// index, so results are deterministic. Leaves `out` empty for an empty name.
    pub fn search(&self, q: &Query<'_>, k: usize, scratch: &mut Scratch, out: &mut Vec<Hit>) {
        out.clear();
        let k = k.min(MAX_K);
        if k == 0 || self.is_empty() {
            return;
        }
        if scratch.counts.len() != self.name_count() {
            *scratch = self.scratch();
        }
        let Some(p) = prepare(q) else { return };
        self.candidate_names(&p, scratch);
        // A note may name what the item's spec says (`黄芩(蜜炙)` for spec `蜜炙`): then
        // the note agrees with that item even though the catalog name has no such note.
        let note_spec = p.spec.is_empty() && p.notes.iter().any(|n| !n.1.is_empty());
        let w_total = W_NAME
            + if p.spec.is_empty() { 0.0 } else { W_SPEC }
            + if p.form.is_some() { W_FORM } else { 0.0 }
            + if p.maker.is_empty() { 0.0 } else { W_MAKER };
        let rest = w_total - W_NAME;
        for &(name_sim, name_id, aux) in &scratch.names {
            let note_gain = if note_spec {
                AUX_SHARE * (1.0 - aux)
            } else {
                0.0
            };
            let bound = (W_NAME * (name_sim + note_gain) + rest) / w_total;
            if out.len() == k && bound < out[k - 1].score {
                break;
            }
            let name_spec = self.name_spec.get(name_id as usize);
            for &item in self.name_items.get(name_id as usize) {
                let it = item as usize;
                let mut score = W_NAME * name_sim;
                if note_spec {
                    // Notes that name this item's spec are not notes the name lacks.
                    let own = self.spec_tokens.get(self.item_spec[it] as usize);
                    let named = |t: &[u64]| !t.is_empty() && normalize::common(t, own) == t.len();
                    if p.notes.iter().any(|n| named(&n.1)) {
                        scratch.tokens.clear();
                        for n in p.notes.iter().filter(|n| !named(&n.1)) {
                            scratch.tokens.extend_from_slice(&n.0);
                        }
                        scratch.tokens.sort_unstable();
                        scratch.tokens.dedup();
                        let own_aux = self.aux_grams.get(name_id as usize);
                        let rest_aux = if p.initials.is_empty() {
                            aux_similarity(&scratch.tokens, own_aux)
                        } else {
                            initials_aux(&scratch.tokens)
                        };
                        score += W_NAME * AUX_SHARE * (rest_aux - aux);
                    }
                }
                if !p.spec.is_empty() {
                    let own = self.spec_tokens.get(self.item_spec[it] as usize);
                    let s = if name_spec.is_empty() {
                        spec::similarity(&p.spec, own)
                    } else {
                        scratch.tokens.clear();
                        scratch.tokens.extend_from_slice(own);
                        scratch.tokens.extend_from_slice(name_spec);
                        scratch.tokens.sort_unstable();
                        scratch.tokens.dedup();
                        spec::similarity(&p.spec, &scratch.tokens)
                    };
                    score += W_SPEC * s;
                }
                if let Some(qf) = p.form {
                    let f = self.item_form[it];
                    let s = if f.id == NO_FORM {
                        0.3
                    } else if f.id == qf.id {
                        1.0
                    } else if f.family == qf.family {
                        0.6
                    } else {
                        0.0
                    };
                    score += W_FORM * s;
                }
                if !p.maker.is_empty() {
                    score += W_MAKER
                        * maker_similarity(
                            &p.maker,
                            self.maker_grams.get(self.item_maker[it] as usize),
                        );
                }
                let hit = Hit {
                    item,
                    score: (score / w_total).clamp(0.0, 1.0),
                };
                insert_top(out, k, hit);
            }
        }
    }

    /// Fills `scratch.names` with (name similarity, name id, note agreement), best first.
    fn candidate_names(&self, p: &Prepared, scratch: &mut Scratch) {
        scratch.names.clear();
        scratch.grams.clear();
        scratch
            .grams
            .extend(p.stem.iter().chain(&p.initials).copied());
        // Rarest grams first; frequent ones only while the posting budget lasts.
        let mut used: Vec<(u32, u32)> = scratch
            .grams
            .iter()
            .filter_map(|g| self.grams.get(g).copied())
            .collect();
        used.sort_unstable_by_key(|&(s, len)| (len, s));
        used.truncate(MAX_QUERY_GRAMS);
        let mut budget = 0usize;
        for (n_used, &(start, len)) in used.iter().enumerate() {
            if n_used >= 2 && budget + len as usize > POSTING_BUDGET {
                break;
            }
            budget += len as usize;
            for &id in &self.postings[start as usize..(start + len) as usize] {
                let c = &mut scratch.counts[id as usize];
                if *c == 0 {
                    scratch.touched.push(id);
                }
                *c += 1;
            }
        }
        // Keep the names sharing the most grams, ranked by a Dice estimate from the shared
        // count and the name's length (so a short query prefers short names), then rescore
        // those exactly.
        let max = scratch
            .touched
            .iter()
            .map(|&id| scratch.counts[id as usize])
            .max()
            .unwrap_or(0);
        let floor = max.div_ceil(2).max(1);
        let q_len = (p.stem.len() + p.initials.len()) as u32;
        let cands = &mut scratch.cands;
        cands.clear();
        for &id in &scratch.touched {
            let c = scratch.counts[id as usize];
            scratch.counts[id as usize] = 0;
            if c >= floor {
                let i = id as usize;
                let grams = if p.initials.is_empty() {
                    &self.stem_grams
                } else {
                    &self.initial_grams
                };
                let len = grams.offs[i + 1] - grams.offs[i];
                // Fixed-point 2c / (|q| + |name|), higher first.
                let est = ((2 * c as u32) << 16) / (q_len + len).max(1);
                cands.push((est, id));
            }
        }
        scratch.touched.clear();
        if cands.len() > MAX_CANDIDATE_NAMES {
            cands.select_nth_unstable_by(MAX_CANDIDATE_NAMES - 1, |a, b| {
                b.0.cmp(&a.0).then(a.1.cmp(&b.1))
            });
            cands.truncate(MAX_CANDIDATE_NAMES);
        }
        for &(_, id) in cands.iter() {
            let i = id as usize;
            let salt = match (p.salt, self.name_salt[i]) {
                (a, b) if a == b => 1.0,
                (0, _) | (_, 0) => SALT_MISSING,
                _ => SALT_OTHER,
            };
            let mut sim = salt * dice(&p.stem, self.stem_grams.get(i));
            let aux = if p.initials.is_empty() {
                aux_similarity(&p.aux, self.aux_grams.get(i))
            } else {
                sim = sim.max(dice(&p.initials, self.initial_grams.get(i)));
                initials_aux(&p.aux)
            };
            let sim = (1.0 - AUX_SHARE) * sim + AUX_SHARE * aux;
            if sim >= MIN_NAME_SIM {
                scratch.names.push((sim, id, aux));
            }
        }
        scratch
            .names
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    }
}

/// Normalises a query once; None when its name has nothing to match on.
fn prepare(q: &Query<'_>) -> Option<Prepared> {
    let name = truncate(q.name);
    let parts = split_name(name);
    if parts.core.is_empty() {
        return None;
    }
    let mut p = Prepared::default();
    let (stem, name_form) = if looks_like_initials(&parts.core) {
        initial_grams(&parts.core, &mut p.initials);
        (parts.core.as_str(), None)
    } else {
        split_form(&parts.core)
    };
    let (stem, salt) = split_salt(stem);
    p.salt = salt;
    char_grams(stem, &mut p.stem);
    char_grams(&parts.aux, &mut p.aux);
    if q.spec.trim().is_empty() {
        for word in parts.aux.split(' ') {
            let (mut grams, mut tokens) = (Vec::new(), Vec::new());
            char_grams(word, &mut grams);
            spec::tokens(word, &mut tokens);
            p.notes.push((grams, tokens));
        }
    }
    spec::tokens(truncate(q.spec), &mut p.spec);
    spec::tokens(&parts.spec_text, &mut p.spec);
    p.spec.sort_unstable();
    p.spec.dedup();
    p.form = name_form.or_else(|| form_of_field(truncate(q.dosage_form)));
    maker_grams(truncate(q.manufacturer), &mut p.maker);
    Some(p)
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_QUERY_BYTES {
        return s;
    }
    let mut end = MAX_QUERY_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How well the bracketed notes agree. A candidate's note the query lacks (`(儿童)`) counts
/// against it more than a query note the candidate lacks, which is often noise (`(集采)`).
fn aux_similarity(q: &[u64], item: &[u64]) -> f32 {
    match (q.is_empty(), item.is_empty()) {
        (true, true) => 1.0,
        (false, true) => 0.6,
        (true, false) => 0.3,
        (false, false) => {
            let c = normalize::common(q, item) as f32;
            0.3 + 0.35 * (c / item.len() as f32 + c / q.len() as f32)
        }
    }
}

/// Note agreement for a query typed as initials: those cover the catalog's notes, so only
/// the query's own notes (`AMXLJN(集采)`) count, as notes a candidate lacks.
fn initials_aux(q: &[u64]) -> f32 {
    if q.is_empty() {
        1.0
    } else {
        0.6
    }
}

/// Maker similarity: Dice, or how much of the query's core the item's maker contains (an
/// abbreviation such as `华海` for `浙江华海`), a little discounted.
#[inline]
fn maker_similarity(q: &[u64], item: &[u64]) -> f32 {
    let ((q, q_name), (item, item_name)) = (maker_name_key(q), maker_name_key(item));
    if item.is_empty() || q.is_empty() {
        return 0.0;
    }
    let c = normalize::common(q, item) as f32;
    let dice = 2.0 * c / (q.len() + item.len()) as f32;
    let core = dice.max(0.9 * c / q.len() as f32);
    // The same name up to the legal form settles makers that share a core.
    let same_name = q_name.is_some() && q_name == item_name;
    0.85 * core + if same_name { 0.15 } else { 0.0 }
}

/// Inserts into a best-first list of at most k hits (score desc, then item asc).
#[inline]
fn insert_top(out: &mut Vec<Hit>, k: usize, hit: Hit) {
    let better = |a: &Hit, b: &Hit| a.score > b.score || (a.score == b.score && a.item < b.item);
    if out.len() == k && !better(&hit, &out[k - 1]) {
        return;
    }
    let pos = out.partition_point(|h| better(h, &hit));
    if out.len() == k {
        out.pop();
    }
    out.insert(pos, hit);
}

/// Items of each name id, grouped (counting sort, items ascending within a name).
fn group_items(item_name: &[u32], n_names: usize) -> Csr<u32> {
    let mut offs = vec![0u32; n_names + 1];
    for &nm in item_name {
        offs[nm as usize + 1] += 1;
    }
    for i in 0..n_names {
        offs[i + 1] += offs[i];
    }
    let mut fill = offs.clone();
    let mut data = vec![0u32; item_name.len()];
    for (i, &nm) in item_name.iter().enumerate() {
        data[fill[nm as usize] as usize] = i as u32;
        fill[nm as usize] += 1;
    }
    Csr { data, offs }
}

#[cfg(test)]
mod tests;
