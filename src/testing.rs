//! Helpers for the unit tests: a small deterministic generator of hostile inputs (no extra
//! dependency; the same seed gives the same cases, so a failure is reproducible).

/// Xorshift: deterministic, fast, good enough to shake parsers.
pub struct Fuzz(pub u64);

impl Fuzz {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `text` with characters dropped, doubled, or replaced by odd ones (quotes, brackets,
    /// multi-byte letters whose case changes length, control and bidi characters).
    pub fn mangle(&mut self, text: &str) -> String {
        const ODD: [&str; 18] = [
            "\u{0}", "\"", "'", "`", "{", "}", "(", ")", "[", "]", "\\", "ß", "ŉ", "İ", "\u{202e}",
            "💥", "\n", "ﬃ",
        ];
        let mut out = String::new();
        for ch in text.chars() {
            match self.next() % 10 {
                0 => {}
                1 => out.push_str(ODD[(self.next() % ODD.len() as u64) as usize]),
                2 => {
                    out.push(ch);
                    out.push(ch);
                }
                _ => out.push(ch),
            }
        }
        out
    }
}
