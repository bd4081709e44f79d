//! Text in aligned columns, for people: the tables of `p11audit report` and the counts per
//! event, function and result of `p11audit verify`.

use super::text::escape;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Writes `rows` in aligned columns: each line starts with `indent`, every cell but a row's last
/// is padded to the widest cell of its column (in characters) and followed by `gap`, and white
/// space at the end of a line is dropped. Cells are written as they are: escape text from a log
/// before it goes in.
pub(crate) fn table(o: &mut String, indent: &str, gap: &str, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(indent);
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}{gap}", w = widths[c]);
            }
        }
        o.push_str(line.trim_end());
        o.push('\n');
    }
}

/// `title` on a line of its own, then one line per name (escaped) with its count, the counts
/// right-aligned in eight places; nothing for no counts.
pub fn count_table(o: &mut String, title: &str, counts: &BTreeMap<String, u64>) {
    if counts.is_empty() {
        return;
    }
    let _ = writeln!(o, "{title}");
    let rows: Vec<Vec<String>> = counts
        .iter()
        .map(|(name, n)| vec![escape(name), format!("{n:>8}")])
        .collect();
    table(o, "  ", " ", &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_by_characters_and_the_last_cell_is_not_padded() {
        let rows = vec![
            vec!["é".to_string(), "x".into(), "last".into()],
            vec!["abc".into(), "".into()],
            vec!["ab".into(), "yy".into(), "".into()],
        ];
        let mut o = String::new();
        table(&mut o, "  ", "  ", &rows);
        assert_eq!(o, "  é    x   last\n  abc\n  ab   yy\n");
    }

    #[test]
    fn counts_are_escaped_names_and_right_aligned_counts() {
        let counts = BTreeMap::from([("C_Sign".to_string(), 12), ("C_Login\x1b".to_string(), 3)]);
        let mut o = String::new();
        count_table(&mut o, "functions:", &counts);
        assert_eq!(
            o,
            "functions:\n  C_Login\\x1b        3\n  C_Sign            12\n"
        );
        let mut empty = String::new();
        count_table(&mut empty, "results:", &BTreeMap::new());
        assert_eq!(empty, "");
    }
}
