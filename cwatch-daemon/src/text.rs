/*!
Names are data, not terminal input. Any process can name itself anything
(`prctl(PR_SET_NAME)`: a newline, an escape sequence, bytes that are not
UTF-8, a name cut mid-character at 15 bytes), and so can a systemd unit or
an executable's path. Two rules, one per kind of output:

- [`lossless`]: for formats with their own escaping (Prometheus labels,
  JSON), the exact bytes. Both formats carry only UTF-8, so a byte that is
  not part of valid UTF-8 is written `\xNN` (Python's `backslashreplace`);
  everything else, newlines and escape characters included, is kept and
  left to the format's own escaping.
- [`for_terminal`]: for what people read (`cwatch ls`, `cwatch doctor`,
  log lines), control characters are shown escaped: `\n`, `\r`, `\t`,
  `\xNN` for the other C0 characters and DEL, `\u{NN}` for C1 controls and
  the bidirectional overrides that could reorder a line on screen. A name
  can then neither split a row nor recolour, move or hide anything.
*/
use std::{borrow::Cow, fmt::Write as _};

/// `bytes` as text, invalid UTF-8 as `\xNN` per byte.
pub fn lossless(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    Cow::Owned(out)
}

/// Whether `c` must not reach a terminal as it is.
fn unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every control character escaped (see the module doc).
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_for_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && unsafe_for_terminal(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_for_terminal(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Bytes for a terminal: [`lossless`], then [`for_terminal`].
pub fn bytes_for_terminal(bytes: &[u8]) -> String {
    for_terminal(&lossless(bytes)).into_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_keep_their_bytes_for_formats_and_are_escaped_for_people() {
        assert_eq!(lossless(b"order-svc"), "order-svc");
        assert_eq!(
            lossless(b"a\nb\x1b[31m"),
            "a\nb\x1b[31m",
            "formats escape these"
        );
        assert_eq!(lossless(b"bad\xff\xfe"), "bad\\xff\\xfe");
        // 15 bytes cut mid-character: the lone lead byte is kept as \xNN.
        assert_eq!(
            lossless("ab€".as_bytes().split_last().unwrap().1),
            "ab\\xe2\\x82"
        );
        assert_eq!(for_terminal("order-svc"), "order-svc");
        assert_eq!(for_terminal("evil\nrow"), "evil\\nrow");
        assert_eq!(
            for_terminal("\x1b[2J\x1b[31mred\t\r"),
            "\\x1b[2J\\x1b[31mred\\t\\r"
        );
        assert_eq!(for_terminal("x\u{7f}\u{85}"), "x\\x7f\\u{85}");
        assert_eq!(for_terminal("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            for_terminal("naïve 名前"),
            "naïve 名前",
            "printable Unicode stays"
        );
        assert_eq!(bytes_for_terminal(b"x\n\xff"), "x\\n\\xff");
    }

    proptest! {
        #[test]
        fn terminal_text_has_no_control_characters(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let shown = bytes_for_terminal(&bytes);
            prop_assert!(!shown.chars().any(unsafe_for_terminal), "{:?}", shown);
            // Valid UTF-8 without backslashes comes back exactly from lossless.
            if let Ok(text) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(lossless(&bytes), text);
            }
        }
    }
}
