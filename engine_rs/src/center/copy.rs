//! Rows in the text format of PostgreSQL's `COPY ... FROM STDIN`: columns separated by a
//! tab, rows ended by a newline, NULL as `\N`, a backslash, tab, newline or carriage return
//! inside a value escaped, `bytea` as `\\x` and hex digits.

use std::fmt::Write as _;

/// One row being written into `out`.
pub struct Row<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Row<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, first: true }
    }

    fn sep(&mut self) {
        if !self.first {
            self.out.push(b'\t');
        }
        self.first = false;
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.sep();
        for b in value.bytes() {
            match b {
                b'\\' => self.out.extend_from_slice(b"\\\\"),
                b'\t' => self.out.extend_from_slice(b"\\t"),
                b'\n' => self.out.extend_from_slice(b"\\n"),
                b'\r' => self.out.extend_from_slice(b"\\r"),
                _ => self.out.push(b),
            }
        }
        self
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        self.sep();
        let mut s = String::new();
        let _ = write!(s, "{value}");
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.sep();
        self.out.extend_from_slice(b"\\N");
        self
    }

    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    pub fn bytea(&mut self, value: &[u8]) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.sep();
        // `\x` hex input, its backslash escaped for COPY's text format
        self.out.extend_from_slice(b"\\\\x");
        for b in value {
            self.out.push(HEX[usize::from(b >> 4)]);
            self.out.push(HEX[usize::from(b & 15)]);
        }
        self
    }

    pub fn end(&mut self) {
        self.out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::Row;

    #[test]
    fn escapes_what_copy_text_format_reads_specially() {
        let mut out = Vec::new();
        Row::new(&mut out)
            .text("a\tb\\c\nd\re")
            .int(-5)
            .null()
            .bytea(&[0, 0xab])
            .opt_text(None)
            .opt_int(Some(7))
            .end();
        assert_eq!(
            out,
            b"a\\tb\\\\c\\nd\\re\t-5\t\\N\t\\\\x00ab\t\\N\t7\n".to_vec()
        );
    }
}
