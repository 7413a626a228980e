//! The checks of forwarded ids, dates and texts, as the Python side makes them
//! (server/nodes.py, server/codes.py, `str.isprintable` and `repr`), so a refusal reads the
//! same whichever side wrote it.

/// psn_no, msgid, invono and the ids looked up: at most this many characters.
pub const MAX_TEXT: usize = 64;

/// Python's `str.isprintable` for the texts ids are made of: no control, format,
/// separator (but the space), private-use or surrogate character.
pub fn printable(text: &str) -> bool {
    text.chars().all(|c| {
        let u = u32::from(c);
        !(c.is_control()
            || (c.is_whitespace() && c != ' ')
            || matches!(u, 0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E)
            || matches!(u, 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F)
            || matches!(u, 0xFEFF | 0xFFF9..=0xFFFB | 0xE000..=0xF8FF | 0xF0000..)
            || matches!(u, 0x110BD | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F))
    })
}

/// A text the lookups may take: short and printable (a NUL or a megabyte is refused by
/// its item's own checks, and must not fail the whole batch's statement first).
pub(crate) fn plain(text: &str) -> bool {
    text.chars().count() <= MAX_TEXT && printable(text)
}

/// Python's `repr` of a string, as the texts of refusals show one.
pub(crate) fn repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::new();
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if printable(c.encode_utf8(&mut [0; 4])) => out.push(c),
            c => {
                let u = u32::from(c);
                if u < 0x100 {
                    out.push_str(&format!("\\x{u:02x}"));
                } else if u < 0x10000 {
                    out.push_str(&format!("\\u{u:04x}"));
                } else {
                    out.push_str(&format!("\\U{u:08x}"));
                }
            }
        }
    }
    out.push(quote);
    out
}

/// `server.nodes.issued_by`: whether `value` is an id of `kind` issued by the node.
pub fn issued_by(value: &str, kind: &str, fixmedins_code: &str, node_id: &str) -> bool {
    let prefix = format!("{kind}{fixmedins_code}{node_id}");
    let Some(serial) = value.strip_prefix(&prefix) else {
        return false;
    };
    let b = serial.as_bytes();
    (b.len() == 12 && b.iter().all(u8::is_ascii_digit))
        || (b.len() == 13
            && (b[0] == b'H' || b[0] == b'U')
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)))
}

/// `server.codes.valid_date`: a yyyymmdd date of 1900..2999.
pub fn valid_date(d: i64) -> bool {
    let (y, m, day) = (
        d.div_euclid(10_000),
        d.div_euclid(100).rem_euclid(100),
        d.rem_euclid(100),
    );
    if !((1900..=2999).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&day)) {
        return false;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    // m is 1..=12
    day <= mdays[(m - 1) as usize]
}

/// `server.codes.treatment_of`: the engine's treatment code for a national med_type.
pub fn treatment_of(med_type: i32) -> u8 {
    match med_type {
        21 | 24 | 52 => 2,
        14 => 3,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_a_node_are_its_prefix_and_a_serial() {
        assert!(issued_by("SH00101000000000042", "S", "H001", "01"));
        assert!(issued_by("SH00101U0123456789ab", "S", "H001", "01"));
        assert!(!issued_by("SH00102000000000042", "S", "H001", "01"));
        assert!(!issued_by("SH0010100000000004", "S", "H001", "01"));
        assert!(!issued_by("SH00101U0123456789aB", "S", "H001", "01"));
        assert!(!issued_by("MH00101000000000042", "S", "H001", "01"));
    }

    #[test]
    fn dates_and_texts_as_the_python_checks_read_them() {
        assert!(valid_date(20240229));
        assert!(!valid_date(20230229));
        assert!(!valid_date(18991231));
        assert!(!valid_date(-20240101));
        assert!(printable("ABC 123 张三"));
        assert!(!printable("a\0b"));
        assert!(!printable("a\u{200b}b"));
        assert!(!printable("a\u{3000}b"));
        assert_eq!(repr("x"), "'x'");
        assert_eq!(repr("it's"), "\"it's\"");
        assert_eq!(repr("a\0\n"), "'a\\x00\\n'");
        assert_eq!(repr("\u{200b}"), "'\\u200b'");
    }
}
