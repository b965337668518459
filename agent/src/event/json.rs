//! Writing events' JSON straight into a reused buffer: the hot path of a busy file input turns
//! a million lines a second into events, so nothing here allocates unless a line is invalid
//! UTF-8. Strings are escaped eight bytes at a time while a word holds nothing to escape.

/// Appends `text` as a JSON string. Invalid UTF-8 is replaced (U+FFFD); returns whether the text
/// was valid.
pub fn push_str(out: &mut Vec<u8>, text: &[u8]) -> bool {
    let mark = out.len();
    if push_escaped(out, text) || std::str::from_utf8(text).is_ok() {
        return true;
    }
    out.truncate(mark);
    push_escaped(out, String::from_utf8_lossy(text).as_bytes());
    false
}

/// Appends `,"name":` (or `"name":` right after the opening brace).
pub fn push_key(out: &mut Vec<u8>, name: &str) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends any JSON value (a container's labels, an input's fields).
pub fn push_value(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    serde_json::to_writer(out, value).expect("JSON values and maps of them serialize");
}

/// Appends an unsigned integer in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `word` is zero.
fn has_zero(word: u64) -> bool {
    word.wrapping_sub(ONES) & !word & HIGHS != 0
}

/// Whether a byte of `word` must be escaped: a control character, `"` or `\`.
fn needs_escape(word: u64) -> bool {
    word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0
        || has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
}

/// Escapes `text` into `out` between quotes; whether it was all ASCII (then it is valid UTF-8
/// without a second look).
fn push_escaped(out: &mut Vec<u8>, text: &[u8]) -> bool {
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut high = 0u64;
    let mut copied = 0;
    let mut at = 0;
    while at < text.len() {
        if let Some(word) = text.get(at..at + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            high |= word;
            if !needs_escape(word) {
                at += 8;
                continue;
            }
        }
        let end = (at + 8).min(text.len());
        for (i, &byte) in text[at..end].iter().enumerate() {
            high |= u64::from(byte);
            let mut unicode = *b"\\u00XX";
            let escaped: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    unicode[4] = HEX[usize::from(byte >> 4)];
                    unicode[5] = HEX[usize::from(byte & 0xf)];
                    &unicode
                }
                _ => continue,
            };
            out.extend_from_slice(&text[copied..at + i]);
            out.extend_from_slice(escaped);
            copied = at + i + 1;
        }
        at = end;
    }
    out.extend_from_slice(&text[copied..]);
    out.push(b'"');
    high & HIGHS == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &[u8]) -> (String, bool) {
        let mut out = Vec::new();
        let valid = push_str(&mut out, text);
        (String::from_utf8(out).unwrap(), valid)
    }

    #[test]
    fn strings_read_back_as_serde_json_reads_them() {
        let cases: &[&str] = &[
            "",
            "plain ASCII text longer than one eight-byte word",
            "quote \" backslash \\ tab \t newline \n cr \r",
            "\u{0}\u{1}\u{8}\u{c}\u{1f}\u{7f}",
            "ünïcödé — 日本語 🚀 \"mixed\" with escapes\\",
            "12345678\"12345678\\",
        ];
        for case in cases {
            let (out, valid) = json(case.as_bytes());
            assert!(valid, "{case:?}");
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), *case);
            assert_eq!(out, serde_json::to_string(case).unwrap());
        }
    }

    #[test]
    fn every_byte_at_every_position_of_a_word() {
        for byte in 0u8..0x80 {
            for at in 0..17 {
                let mut text = vec![b'a'; 17];
                text[at] = byte;
                let text = String::from_utf8(text).unwrap();
                let (out, _) = json(text.as_bytes());
                assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
            }
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_and_reported() {
        let (out, valid) = json(b"caf\xc3 ok \xff\"");
        assert!(!valid);
        assert_eq!(
            serde_json::from_str::<String>(&out).unwrap(),
            "caf\u{fffd} ok \u{fffd}\""
        );
    }

    #[test]
    fn numbers_and_keys() {
        let mut out = b"{".to_vec();
        push_key(&mut out, "a");
        push_u64(&mut out, 0);
        push_key(&mut out, "b");
        push_u64(&mut out, u64::MAX);
        out.push(b'}');
        assert_eq!(out, b"{\"a\":0,\"b\":18446744073709551615}");
    }
}
