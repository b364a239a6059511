//! Showing text that a guest (or a tenant's file names) chose: escaped and
//! bounded, wherever it is shown.
//!
//! Guest text reaches the operator's terminal and logs: build output,
//! tracebacks, load-error messages, route tables, file names. Raw, it could
//! drive a terminal (ESC, OSC sequences), rewrite a line (CR), forge a line
//! of pycage's own (a newline followed by `pycage: ...` or a log record), or
//! reorder what is shown (bidi overrides such as U+202E, invisible U+200B,
//! U+FEFF, line and paragraph separators U+2028/U+2029). Every such
//! character is shown as a visible escape instead, and every text has a
//! length bound.

/// Whether `c` is shown as an escape: control characters other than tab
/// (Unicode category Cc), format characters (Cf: bidi controls, zero-width
/// characters, the BOM, tags) and the line and paragraph separators (Zl,
/// Zp).
fn is_hidden(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c as u32,
            0xAD | 0x600..=0x605
                | 0x61C
                | 0x6DD
                | 0x70F
                | 0x890..=0x891
                | 0x8E2
                | 0x180E
                | 0x200B..=0x200F
                | 0x2028..=0x202E
                | 0x2060..=0x2064
                | 0x2066..=0x206F
                | 0xFEFF
                | 0xFFF9..=0xFFFB
                | 0x110BD
                | 0x110CD
                | 0x13430..=0x1343F
                | 0x1BCA0..=0x1BCA3
                | 0x1D173..=0x1D17A
                | 0xE0001
                | 0xE0020..=0xE007F
        )
}

/// `line` with every control, format or separator character (newlines
/// included) replaced by a visible escape (`\u{1b}`, `\n`, `\u{202e}`).
pub fn escape_controls(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if is_hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` bytes of `text` (cut at a character boundary), with a
/// note of how much was left out.
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &text[..end], text.len() - end).into()
}

/// A single line for a message: escaped (newlines too) and bounded.
pub fn one_line(text: &str, max: usize) -> String {
    escape_controls(&bounded(text, max))
}

/// A multi-line guest text (a traceback) for a message: at most `max`
/// bytes, every line escaped and indented behind `| `, so that no line of
/// it can pass for one of pycage's own.
pub fn block(text: &str, max: usize) -> String {
    let mut out = String::new();
    for line in bounded(text, max).lines() {
        out.push_str("  | ");
        out.push_str(&escape_controls(line));
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_format_and_separator_characters_are_escaped() {
        assert_eq!(escape_controls("a\u{1b}[31mb\tc\r"), "a\\u{1b}[31mb\tc\\r");
        assert_eq!(escape_controls("x\ny"), "x\\ny");
        for hidden in [
            '\u{2028}', '\u{2029}', '\u{202e}', '\u{200b}', '\u{feff}', '\u{2066}',
        ] {
            let shown = escape_controls(&format!("a{hidden}b"));
            assert!(!shown.contains(hidden), "{hidden:?} -> {shown}");
            assert!(
                shown.starts_with("a\\u{") && shown.ends_with("}b"),
                "{shown}"
            );
        }
        assert_eq!(escape_controls("café ✓ 日本"), "café ✓ 日本");
    }

    #[test]
    fn texts_are_bounded_and_blocks_indented() {
        assert_eq!(bounded("abcdef", 3), "abc... (3 more bytes)");
        assert_eq!(bounded("é", 1), "... (2 more bytes)");
        assert_eq!(one_line("a\nb", 10), "a\\nb");
        assert_eq!(
            block("Traceback:\npycage: granting /etc\n", 100),
            "  | Traceback:\n  | pycage: granting /etc"
        );
    }
}
