//! The table of audit kinds in docs/FORMAT.md §5 is the function list in the code
//! (`p11audit::shim::FUNCTIONS`), row for row: every function appears once, in the row of its
//! kind, and no row names a function the list does not have. A parenthesized note after a name
//! ("C_Initialize (also an `attach`)") is allowed. On a mismatch the test prints the rows the
//! list gives, ready to paste.

use p11audit::shim::{Kind, FUNCTIONS};
use std::collections::BTreeMap;

/// The kind's name in the table's first column.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Informational => "informational",
        Kind::Acting => "acting",
        Kind::ActingResult => "acting and result",
        Kind::Result => "result",
        Kind::Prepare => "prepare",
        Kind::GivingUp => "giving-up",
    }
}

/// The function names in a cell, without the notes in parentheses.
fn names_in(cell: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut depth = 0;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
        .split(',')
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

#[test]
fn format_md_lists_every_function_under_its_kind() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md"))
        .expect("read docs/FORMAT.md");
    let section = doc
        .split("\n## 5. Audit kinds\n")
        .nth(1)
        .expect("FORMAT.md has a section \"## 5. Audit kinds\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut documented: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (kind, functions) = (cells[1], cells[2]);
        if kind == "kind" || kind.starts_with("---") {
            continue;
        }
        documented
            .entry(kind.to_string())
            .or_default()
            .extend(names_in(functions));
    }
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, kind) in FUNCTIONS {
        expected
            .entry(kind_name(*kind).to_string())
            .or_default()
            .push(name.to_string());
    }
    let sorted = |m: &BTreeMap<String, Vec<String>>| -> BTreeMap<String, Vec<String>> {
        m.iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                v.sort();
                (k.clone(), v)
            })
            .collect()
    };
    let rows: String = expected
        .iter()
        .map(|(kind, names)| format!("| {kind} | {} |\n", names.join(", ")))
        .collect();
    assert_eq!(
        sorted(&documented),
        sorted(&expected),
        "docs/FORMAT.md §5 does not match the function list; its rows should name:\n{rows}"
    );
}

#[test]
fn names_in_drops_notes() {
    assert_eq!(
        names_in("C_Initialize (also an `attach`), C_Login"),
        ["C_Initialize", "C_Login"]
    );
    assert!(names_in("").is_empty());
}
