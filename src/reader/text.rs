//! Text from a log made safe to print: escaping (controls, and characters that print blank,
//! invisibly, or change the characters around them), quoting, and notes on names whose letters
//! could pass for another name's.
//!
//! Logs are attacker-controlled input: whoever can append can write any label, exe path or
//! note, so everything taken from a record goes through [`escape`] before it reaches a
//! terminal.

use std::fmt::Write as _;

/// Escapes C0 controls, DEL and backslashes, and as `\u{…}` every character outside ASCII that
/// a terminal interprets, that prints blank or not at all, or that changes how the characters
/// around it are shown ([`shown_escaped`]), so that text from a log prints as one harmless
/// line that reads as it is, and two texts that print the same are the same text.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if shown_escaped(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether [`escape`] writes a character outside ASCII as `\u{…}`: the general categories
/// Other (C*), Separator (Z*) and Mark (M*), that is
/// - controls (Cc: the C1 controls, which terminals interpret, e.g. U+009B = CSI);
/// - format characters (Cf): bidirectional controls (a label with U+202E shows its end first,
///   "Trojan Source"), zero-width spaces and joiners, the soft hyphen, U+FEFF, tags;
/// - spaces other than U+0020 (Zs: U+00A0, U+3000, U+2000..U+200A, …) and the line and
///   paragraph separators (Zl, Zp): `key` and `key\u{a0}` would print alike;
/// - combining marks (Mn, Mc, Me): `ec\u{336}k` prints as a struck-through `eck`, and variation
///   selectors and the combining grapheme joiner print as nothing;
/// - private use (Co) and unassigned code points (Cn, noncharacters included), whose look
///   depends on the font, if they show at all (Cs, surrogates, is never a `char`).
///
/// And the letters and symbols that print blank although their category does not say so
/// ([`prints_blank`]).
fn shown_escaped(c: char) -> bool {
    use unicode_properties::{GeneralCategoryGroup as G, UnicodeGeneralCategory};
    !c.is_ascii()
        && (matches!(
            c.general_category_group(),
            G::Other | G::Separator | G::Mark
        ) || prints_blank(c))
}

/// Letters (Lo) and symbols (So) that print as blank space: the Hangul fillers, U+2800 BRAILLE
/// PATTERN BLANK and U+1D159 MUSICAL SYMBOL NULL NOTEHEAD. `eck\u{2800}` would print as `eck`.
fn prints_blank(c: char) -> bool {
    matches!(
        c,
        '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' | '\u{2800}' | '\u{1d159}'
    )
}

/// `"text"` with [`escape`] applied and inner quotes escaped.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", escape(s).replace('"', "\\\""))
}

/// A name from the log as a person reads it (a label, an id or a user name that is text):
/// [`quote`]d, followed by [`script_note`] when its letters could pass for another name's.
pub fn quote_name(s: &str) -> String {
    let mut q = quote(s);
    if let Some(note) = script_note(s) {
        q.push(' ');
        q.push_str(&note);
    }
    q
}

/// The scripts with letters that look like Latin ones (`е` U+0435 CYRILLIC SMALL LETTER IE and
/// `e`, `ο` U+03BF GREEK SMALL LETTER OMICRON and `o`), in the order a note names them.
const LOOKALIKE_SCRIPTS: [unicode_script::Script; 3] = [
    unicode_script::Script::Latin,
    unicode_script::Script::Cyrillic,
    unicode_script::Script::Greek,
];

/// A note for a name with Cyrillic or Greek characters, which could pass for a name in Latin
/// letters (or in the other script): `[mixed scripts: Latin+Cyrillic]` when it mixes two or
/// three of Latin, Cyrillic and Greek (`еck` with a Cyrillic `е`), `[script: Cyrillic]` when
/// Cyrillic or Greek is the only one of them (`сек`, all Cyrillic, prints like `cek`). Other
/// scripts, and characters of no script of their own (Common: digits, punctuation; Inherited:
/// combining marks), are not counted. None for a name without Cyrillic or Greek.
pub fn script_note(s: &str) -> Option<String> {
    use unicode_script::UnicodeScript;
    let mut seen = [false; LOOKALIKE_SCRIPTS.len()];
    for c in s.chars() {
        let script = c.script();
        if let Some(i) = LOOKALIKE_SCRIPTS.iter().position(|&l| l == script) {
            seen[i] = true;
        }
    }
    if !seen[1] && !seen[2] {
        return None;
    }
    let names: Vec<&str> = LOOKALIKE_SCRIPTS
        .iter()
        .zip(seen)
        .filter(|&(_, seen)| seen)
        .map(|(s, _)| s.full_name())
        .collect();
    Some(if names.len() > 1 {
        format!("[mixed scripts: {}]", names.join("+"))
    } else {
        format!("[script: {}]", names[0])
    })
}

/// JSON text with DEL and the C1 controls (U+007F..U+009F) escaped as `\u00XX`: serde_json
/// escapes only C0 controls, and a C1 CSI (U+009B) from a hostile log would reach a terminal
/// that reads the JSON. The result is still the same JSON value.
pub fn escape_c1_and_del(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_quoting() {
        assert_eq!(escape("a\x1b[2J\u{9b}b\\"), "a\\x1b[2J\\u{9b}b\\\\");
        // A right-to-left override and a zero-width space show as what they are.
        assert_eq!(
            escape("key\u{202e}gpj.exe\u{200b}"),
            "key\\u{202e}gpj.exe\\u{200b}"
        );
        assert_eq!(escape("clé ключ 鍵"), "clé ключ 鍵");
        assert_eq!(
            escape("a\u{ad}b\u{fe0f}\u{e0041}"),
            "a\\u{ad}b\\u{fe0f}\\u{e0041}"
        );
        assert_eq!(quote("x\"y\n"), "\"x\\\"y\\n\"");
        assert_eq!(escape_c1_and_del("\"\u{9b}\u{7f}\""), "\"\\u009b\\u007f\"");
    }

    // Labels that print as copies of `eck`.

    #[test]
    fn braille_blank_prints_escaped() {
        // U+2800 is a symbol (So) that prints as a blank cell.
        assert_eq!(escape("eck\u{2800}"), "eck\\u{2800}");
        assert_eq!(quote("e\u{2800}ck"), "\"e\\u{2800}ck\"");
        // And the other blank-printing letters and symbols.
        for c in ['\u{115f}', '\u{1160}', '\u{3164}', '\u{ffa0}', '\u{1d159}'] {
            assert_eq!(
                escape(&format!("eck{c}")),
                format!("eck\\u{{{:x}}}", c as u32)
            );
        }
    }

    #[test]
    fn ideographic_and_no_break_spaces_print_escaped() {
        assert_eq!(escape("eck\u{3000}"), "eck\\u{3000}");
        assert_eq!(escape("eck\u{a0}"), "eck\\u{a0}");
        assert_eq!(quote("e\u{a0}ck"), "\"e\\u{a0}ck\"");
        // Every space but U+0020, and the line and paragraph separators.
        for c in [
            '\u{1680}', '\u{2000}', '\u{2007}', '\u{200a}', '\u{202f}', '\u{205f}', '\u{2028}',
            '\u{2029}',
        ] {
            assert_eq!(escape(&c.to_string()), format!("\\u{{{:x}}}", c as u32));
        }
        assert_eq!(escape("e ck"), "e ck");
    }

    #[test]
    fn combining_marks_print_escaped() {
        // `ec̶k`: U+0336 COMBINING LONG STROKE OVERLAY strikes through the `c`.
        assert_eq!(escape("ec\u{336}k"), "ec\\u{336}k");
        assert_eq!(quote("ec\u{336}k"), "\"ec\\u{336}k\"");
        // A combining acute (Mn), an enclosing circle (Me), a spacing mark (Mc).
        assert_eq!(
            escape("e\u{301}ck\u{20dd} \u{915}\u{93e}"),
            "e\\u{301}ck\\u{20dd} \u{915}\\u{93e}"
        );
        // A precomposed letter is a letter.
        assert_eq!(escape("\u{e9}ck"), "\u{e9}ck");
    }

    #[test]
    fn format_private_use_and_unassigned_print_escaped() {
        for c in [
            '\u{600}',
            '\u{2062}',
            '\u{2066}',
            '\u{e000}',
            '\u{f8ff}',
            '\u{fdd0}',
            '\u{ffff}',
            '\u{10ffff}',
            '\u{e0001}',
        ] {
            assert_eq!(escape(&c.to_string()), format!("\\u{{{:x}}}", c as u32));
        }
    }

    /// What the hand-written list escaped before general categories took over.
    #[test]
    fn every_character_escaped_before_still_is() {
        let ranges = [
            ('\u{00ad}', '\u{00ad}'),
            ('\u{034f}', '\u{034f}'),
            ('\u{061c}', '\u{061c}'),
            ('\u{115f}', '\u{1160}'),
            ('\u{17b4}', '\u{17b5}'),
            ('\u{180b}', '\u{180f}'),
            ('\u{200b}', '\u{200f}'),
            ('\u{2028}', '\u{202e}'),
            ('\u{2060}', '\u{206f}'),
            ('\u{3164}', '\u{3164}'),
            ('\u{fe00}', '\u{fe0f}'),
            ('\u{feff}', '\u{feff}'),
            ('\u{ffa0}', '\u{ffa0}'),
            ('\u{fff0}', '\u{fff8}'),
            ('\u{1bca0}', '\u{1bca3}'),
            ('\u{1d173}', '\u{1d17a}'),
            ('\u{e0000}', '\u{e0fff}'),
            ('\u{80}', '\u{9f}'),
        ];
        for (a, b) in ranges {
            for c in a..=b {
                assert!(shown_escaped(c), "U+{:04X}", c as u32);
            }
        }
        // Letters, digits and symbols of many scripts still print as they are.
        for text in ["clé ключ 鍵", "κλειδί", "مفتاح", "キー", "🔑", "Zürich-2"]
        {
            assert_eq!(escape(text), text);
        }
    }

    #[test]
    fn cyrillic_ie_in_a_latin_word_is_marked() {
        // `еck` with U+0435 CYRILLIC SMALL LETTER IE.
        assert_eq!(
            quote_name("\u{435}ck"),
            "\"\u{435}ck\" [mixed scripts: Latin+Cyrillic]"
        );
        assert_eq!(quote_name("eck"), "\"eck\"");
        assert_eq!(script_note("eck-2026 é 鍵"), None);
        // All Cyrillic, with letters that look Latin: named too, so `сек` cannot pass for
        // `cek`; digits and punctuation count for no script.
        assert_eq!(
            quote_name("\u{441}\u{435}\u{43a}-1"),
            "\"\u{441}\u{435}\u{43a}-1\" [script: Cyrillic]"
        );
    }

    #[test]
    fn greek_omicron_in_a_latin_word_is_marked() {
        // `rοot` with U+03BF GREEK SMALL LETTER OMICRON.
        assert_eq!(
            quote_name("r\u{3bf}ot"),
            "\"r\u{3bf}ot\" [mixed scripts: Latin+Greek]"
        );
        assert_eq!(
            quote_name("\u{3ba}\u{3bb}"),
            "\"\u{3ba}\u{3bb}\" [script: Greek]"
        );
        assert_eq!(
            script_note("\u{435}\u{3bf}x").as_deref(),
            Some("[mixed scripts: Latin+Cyrillic+Greek]")
        );
        // A combining mark (Inherited) is escaped, and counts for no script.
        assert_eq!(
            quote_name("r\u{3bf}\u{301}ot"),
            "\"r\u{3bf}\\u{301}ot\" [mixed scripts: Latin+Greek]"
        );
        assert_eq!(script_note("ro\u{301}ot"), None);
    }
}
