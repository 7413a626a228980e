//! Matcher behaviour on a small hand-made catalog with near-duplicates.

use super::*;
use crate::catalog::ItemColumns;
use crate::columns::StrColumn;

/// (code, name, spec, dosage form, manufacturer)
const ROWS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "X01",
        "阿莫西林胶囊",
        "0.25g×24粒",
        "胶囊剂",
        "华北制药股份有限公司",
    ),
    (
        "X02",
        "阿莫西林胶囊",
        "0.5g×24粒",
        "胶囊剂",
        "华北制药股份有限公司",
    ),
    (
        "X03",
        "阿莫西林胶囊",
        "0.25g×24粒",
        "胶囊剂",
        "石药集团欧意药业有限公司",
    ),
    (
        "X04",
        "阿莫西林颗粒",
        "0.125g×12袋",
        "颗粒剂",
        "华北制药股份有限公司",
    ),
    (
        "X05",
        "阿莫西林克拉维酸钾片",
        "0.375g×12片",
        "片剂",
        "华北制药股份有限公司",
    ),
    (
        "X06",
        "盐酸二甲双胍片",
        "0.5g×20片",
        "片剂",
        "中美上海施贵宝制药有限公司",
    ),
    (
        "X07",
        "盐酸二甲双胍缓释片",
        "0.5g×30片",
        "缓释片",
        "中美上海施贵宝制药有限公司",
    ),
    (
        "X08",
        "阿司匹林肠溶片",
        "100mg×30片",
        "肠溶片",
        "拜耳医药保健有限公司",
    ),
    (
        "X09",
        "注射用头孢曲松钠",
        "1.0g",
        "注射剂",
        "罗氏制药有限公司",
    ),
    (
        "X10",
        "葡萄糖注射液",
        "250ml:12.5g",
        "注射剂",
        "四川科伦药业股份有限公司",
    ),
    ("S01", "胸部CT平扫", "", "", ""),
    ("S02", "胸部CT增强扫描", "", "", ""),
    ("S03", "胸部CT平扫(急诊)", "每部位", "", ""),
    ("S04", "胸部CT平扫(急诊)", "次", "", ""),
    ("T01", "黄芩", "蜜炙", "饮片", "亳州华康中药饮片有限公司"),
    ("T02", "黄芩", "炒", "饮片", "亳州华康中药饮片有限公司"),
    (
        "X11",
        "马来酸肝素片",
        "40mg×100片",
        "片剂",
        "广西康益制药有限公司",
    ),
    (
        "X12",
        "马来酸肝素缓释片",
        "40mg×100片",
        "缓释片",
        "广西康益制药有限公司",
    ),
    (
        "C01",
        "一次性使用无菌注射器(带针)",
        "5ml",
        "",
        "山东威高集团医用高分子制品股份有限公司",
    ),
    (
        "C02",
        "一次性使用无菌注射器(带针)",
        "10ml",
        "",
        "山东威高集团医用高分子制品股份有限公司",
    ),
];

fn catalog() -> Arc<Catalog> {
    let n = ROWS.len();
    let col = |f: fn(
        &(
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
        ),
    ) -> &'static str| {
        StrColumn::from_strs(&ROWS.iter().map(f).collect::<Vec<_>>())
    };
    let items = ItemColumns {
        code: col(|r| r.0),
        name: col(|r| r.1),
        spec: col(|r| r.2),
        dosage_form: col(|r| r.3),
        manufacturer: col(|r| r.4),
        kind: vec![1; n],
        chrgitm_lv: vec![1; n],
        fee_category: vec![9; n],
        price_cap: vec![0; n],
        selfpay_prop_bp: vec![0; n],
        selfpay_slots: 1,
        inpatient_only: vec![false; n],
        sex: vec![0; n],
        age_min: vec![0; n],
        age_max: vec![255; n],
        diagnoses: StrColumn::from_strs(&vec![""; n]),
        valid_from: vec![0; n],
        valid_to: vec![0; n],
    };
    let c = Catalog::build(1, items, vec![], StrColumn::default(), StrColumn::default());
    Arc::new(c.expect("test catalog is valid"))
}

fn top(m: &Matcher, q: Query<'_>, k: usize) -> Vec<(String, f32)> {
    let mut s = m.scratch();
    let mut out = Vec::new();
    m.search(&q, k, &mut s, &mut out);
    out.iter()
        .map(|h| (m.catalog().code(h.item as usize).to_owned(), h.score))
        .collect()
}

fn best(m: &Matcher, name: &str, spec: &str, form: &str, maker: &str) -> String {
    let q = Query {
        name,
        spec,
        dosage_form: form,
        manufacturer: maker,
    };
    top(m, q, 1)
        .first()
        .map(|h| h.0.clone())
        .unwrap_or_default()
}

#[test]
fn exact_items_score_one() {
    let m = Matcher::build(catalog());
    assert_eq!(m.len(), ROWS.len());
    for r in ROWS {
        let hits = top(
            &m,
            Query {
                name: r.1,
                spec: r.2,
                dosage_form: r.3,
                manufacturer: r.4,
            },
            3,
        );
        assert_eq!(hits[0].0, r.0, "{r:?}");
        assert!((hits[0].1 - 1.0).abs() < 1e-6, "{r:?} {hits:?}");
    }
}

#[test]
fn variants_find_the_same_item() {
    let m = Matcher::build(catalog());
    assert_eq!(
        best(&m, "阿莫西林胶囊(0.25g×24)", "", "", "华北制药"),
        "X01"
    );
    assert_eq!(
        best(&m, "阿莫西林胶囊 0.5g*24粒", "", "", "华北制药"),
        "X02"
    );
    assert_eq!(best(&m, "ＡＭＸＬＪＮ", "250mg*24", "", "石药欧意"), "X03");
    assert_eq!(best(&m, "amxljn", "0.25gx24粒", "胶囊", "华北"), "X01");
    assert_eq!(best(&m, "阿莫西林", "0.125克×12袋", "颗粒", ""), "X04");
    assert_eq!(best(&m, "二甲双胍片剂", "0.5g*20", "片", ""), "X06");
    assert_eq!(best(&m, "二甲双胍缓释片", "", "", ""), "X07");
    assert_eq!(
        best(&m, "阿司匹林肠溶片（集采）", "100毫克×30片", "", "拜耳"),
        "X08"
    );
    assert_eq!(best(&m, "头孢曲松钠", "1g", "注射剂", ""), "X09");
    assert_eq!(best(&m, "5%葡萄糖注射液", "250毫升", "", "科伦"), "X10");
    assert_eq!(best(&m, "胸部 CT 增强扫描", "", "", ""), "S02");
    assert_eq!(
        best(&m, "一次性无菌注射器（带针）", "10ML", "", "威高"),
        "C02"
    );
    assert_eq!(best(&m, "黄芩(蜜炙)", "", "", ""), "T01");
    assert_eq!(best(&m, "黄芩（炒）", "", "", "华康"), "T02");
    assert_eq!(best(&m, "HQ 炒", "", "", ""), "T02");
    assert_eq!(best(&m, "胸部CT平扫(急诊)(次)", "", "", ""), "S04");
    assert_eq!(best(&m, "胸部CT平扫(急诊)", "每部位", "", ""), "S03");
    assert_eq!(best(&m, "胸部CT平扫", "", "", ""), "S01");
    assert_eq!(best(&m, "肝素片剂", "40MGx100", "", ""), "X11");
}

#[test]
fn k_empty_and_unknown_queries() {
    let m = Matcher::build(catalog());
    let q = Query {
        name: "阿莫西林胶囊",
        ..Query::default()
    };
    assert!(top(&m, q, 0).is_empty());
    let three = top(&m, q, 3);
    assert_eq!(three.len(), 3);
    assert!(three.windows(2).all(|w| w[0].1 >= w[1].1));
    assert!(top(&m, q, 100).len() <= ROWS.len());
    assert!(top(&m, Query::default(), 5).is_empty());
    assert!(top(
        &m,
        Query {
            name: " ()（） ",
            ..Query::default()
        },
        5
    )
    .is_empty());
    assert!(top(
        &m,
        Query {
            name: "完全无关的东西",
            ..Query::default()
        },
        5
    )
    .is_empty());
    let long = "阿".repeat(10_000);
    let _ = top(
        &m,
        Query {
            name: &long,
            spec: &long,
            dosage_form: &long,
            manufacturer: &long,
        },
        5,
    );
}

#[test]
fn scores_stay_in_range_and_ties_are_deterministic() {
    let m = Matcher::build(catalog());
    let q = Query {
        name: "阿莫西林胶囊",
        spec: "0.25g",
        ..Query::default()
    };
    let a = top(&m, q, 5);
    assert_eq!(a, top(&m, q, 5));
    assert!(a.iter().all(|h| (0.0..=1.0).contains(&h.1)));
    // X01 and X03 differ only by maker, which the query does not give: lower index first.
    assert_eq!((a[0].0.as_str(), a[1].0.as_str()), ("X01", "X03"));
}

#[test]
fn empty_catalog() {
    let items = ItemColumns {
        selfpay_slots: 1,
        ..ItemColumns::default()
    };
    let c = Catalog::build(1, items, vec![], StrColumn::default(), StrColumn::default()).unwrap();
    let m = Matcher::build(Arc::new(c));
    assert!(m.is_empty());
    assert!(top(
        &m,
        Query {
            name: "阿莫西林",
            ..Query::default()
        },
        5
    )
    .is_empty());
}
