//! One call as a line for people: its intent and outcome joined, in fixed columns, with the
//! details of the call after them. Everything taken from the log is escaped.

use crate::reader::format_duration;
use crate::reader::text::{escape, quote};
use crate::reader::view::{call_began, exe_text, ForPeople, RecView};

/// The header of the human output.
pub(super) fn header() -> String {
    row(
        "SEQ", "TIME", "PID", "UID", "EXE", "SESSION", "LOGIN", "FUNCTION", "RESULT", "DURATION",
        "DETAILS",
    )
}

/// One line in the columns of [`header`], its details after them.
#[allow(clippy::too_many_arguments)]
fn row(
    seq: &str,
    ts: &str,
    pid: &str,
    uid: &str,
    exe: &str,
    session: &str,
    login: &str,
    function: &str,
    result: &str,
    dur: &str,
    details: &str,
) -> String {
    let mut s = format!(
        "{seq:<13} {ts:<27} {pid:>7} {uid:>5} {exe:<20} {session:>7} {login:<6} {function:<20} {result:<22} {dur:>9}"
    );
    if !details.is_empty() {
        s.push_str("  ");
        s.push_str(details);
    }
    s.push('\n');
    s
}

/// Functions whose lines name the token.
const NAMES_TOKEN: &[&str] = &[
    "C_OpenSession",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_Login",
    "C_LoginUser",
];

/// Why an intent is shown without its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoOutcome {
    /// None came before the end of the log.
    AtEnd,
    /// Given up on: too many calls were waiting.
    GivenUp,
    /// The log stopped verifying before an outcome came: it may be past the problem.
    Unverified,
}

/// One call for people. `intent` and `rec` as in [`Filter::matches`]; `missing` when an intent
/// is shown without its outcome.
pub(super) fn human_line(
    intent: Option<&RecView>,
    rec: Option<&RecView>,
    missing: Option<NoOutcome>,
) -> String {
    let Some(first) = intent.or(rec) else {
        return String::new();
    };
    let main = rec.unwrap_or(first);
    let seq = match (intent, rec) {
        (Some(i), Some(o)) => format!("{}>{}", i.seq, o.seq),
        _ => first.seq.to_string(),
    };
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let result = match (&*main.ev, missing) {
        (_, Some(_)) => "NO OUTCOME".to_string(),
        ("outcome", _) => main.rv().map_or_else(|| "-".to_string(), escape),
        ("gap", _) => "GAP".to_string(),
        (ev, _) => escape(ev),
    };
    let dur = match (missing, main.dur_us) {
        (None, Some(d)) => format_duration(d),
        _ => "-".to_string(),
    };

    let who = first.who();
    let mut d: Vec<String> = Vec::new();
    if let Some(via) = who.via {
        d.push(format!(
            "via pid {via} uid {} {}",
            first.uid,
            exe_text(&first.exe)
        ));
    }
    if let Some(auid) = who.auid.filter(|&a| a != who.uid) {
        d.push(format!("auid {auid}"));
    }
    // A prepare call's outcome joined with its operation's first call, or told in it.
    if let (Some(p), Some(_)) = (intent.filter(|i| i.ev == "outcome"), rec) {
        d.push(format!(
            "after {}",
            p.function().map_or_else(|| "-".to_string(), escape)
        ));
    }
    if let Some(init) = &main.init {
        d.push(format!("after {}", escape(&init.function)));
    }
    if let Some(m) = &main.mechanism {
        d.push(format!("mech {}", m.display()));
    }
    if let Some(k) = &main.key {
        d.push(format!("key {}", k.display()));
    }
    if let Some(k) = &main.key2 {
        d.push(format!("key2 {}", k.display()));
    }
    if !main.created.is_empty() {
        let c: Vec<String> = main.created.iter().map(|c| c.display()).collect();
        d.push(format!("created {}", c.join(", ")));
    }
    if let Some(u) = &main.user_type {
        d.push(format!("user {}", escape(u)));
    }
    if let Some(u) = &main.username {
        d.push(format!("username {}", u.display()));
    }
    if let (Some(t), Some(f)) = (&main.token, main.function()) {
        if NAMES_TOKEN.contains(&f) {
            d.push(format!("token {}", t.label.display()));
        }
    }
    for (name, v) in [
        ("in", main.in_len),
        ("out", main.out_len),
        ("sig", main.sig_len),
    ] {
        if let Some(v) = v {
            d.push(format!("{name} {v}"));
        }
    }
    match main.out.as_deref() {
        Some("length_query") => d.push("(length query)".into()),
        Some("buffer_too_small") => d.push("(buffer too small)".into()),
        Some("returned") | None => {}
        Some(other) => d.push(format!("({})", escape(other))),
    }
    if let Some(n) = main.len_queries {
        d.push(format!(
            "(after {n} length quer{})",
            if n == 1 { "y" } else { "ies" }
        ));
    }
    if let Some(c) = main.count {
        d.push(format!("count {c}"));
    }
    if let Some(i) = &main.interface {
        d.push(format!("interface {}", quote(i)));
    }
    if let Some(l) = main.lost {
        let since = main
            .since
            .as_deref()
            .map(|s| format!(" since {}", escape(s)))
            .unwrap_or_default();
        d.push(format!("lost {l} record(s){since}"));
    }
    if let Some(n) = &main.note {
        d.push(format!("note {}", quote(n)));
    }
    match missing {
        Some(NoOutcome::AtEnd) => {
            d.push("(no outcome in the log: the process may have died)".into())
        }
        Some(NoOutcome::GivenUp) => d.push(
            "(no outcome while too many other calls were waiting; it may follow on its own line)"
                .into(),
        ),
        Some(NoOutcome::Unverified) => d.push(
            "(no outcome before the log stopped verifying; it may be past the problem)".into(),
        ),
        None => {}
    }
    row(
        &seq,
        &escape(call_began(intent, rec)),
        &who.pid.to_string(),
        &who.uid.to_string(),
        &who.exe_text(),
        &opt(main.session),
        &main
            .login
            .as_deref()
            .map_or_else(|| "-".to_string(), escape),
        &main.function().map_or_else(|| "-".to_string(), escape),
        &result,
        &dur,
        &d.join("  "),
    )
}

/// A record the verifier accepted but show cannot read as a record.
pub(super) fn unreadable_line(seq: u64, err: &serde_json::Error) -> String {
    format!(
        "{seq:<13} (a verified record show cannot read: {})\n",
        escape(&err.to_string())
    )
}

#[cfg(test)]
mod tests {
    use crate::reader::show::testing::run;
    use crate::reader::show::{Filter, ShowOptions};
    use crate::reader::testlog::body;

    #[test]
    fn gap_and_lifecycle_records_have_lines() {
        let bodies = [
            body(0, 1, 0, "start", None, r#","note":"new chain""#),
            body(
                1,
                1,
                0,
                "gap",
                None,
                r#","lost":3,"since":"2026-11-26T03:00:00.5Z""#,
            ),
        ];
        let (out, _) = run(&bodies, &ShowOptions::new(Filter::default(), false));
        assert!(
            out.contains("start") && out.contains("note \"new chain\""),
            "{out}"
        );
        assert!(
            out.contains("GAP") && out.contains("lost 3 record(s) since 2026-11-26T03:00:00.5Z"),
            "{out}"
        );
        let f = Filter {
            failures: true,
            ..Default::default()
        };
        let (out, _) = run(&bodies, &ShowOptions::new(f, false));
        assert_eq!(out.lines().count(), 2, "{out}");
    }

    /// A serving process's records are shown as the client's: its pid, uid and exe in the
    /// columns, the server after "via", and `--pid`/`--uid` select by either.
    #[test]
    fn a_client_is_who_and_the_server_is_via() {
        let peer = r#","peer":{"pid":77,"uid":1001,"gid":1001,"exe":"/usr/bin/pkcs11-tool","auid":1000,"session":4}"#;
        let bodies = [
            body(0, 1, 0, "start", None, peer),
            body(
                1,
                1,
                0,
                "outcome",
                Some("C_Sign"),
                &format!(r#","rv":"CKR_OK"{peer}"#),
            ),
            body(2, 2, 0, "outcome", Some("C_Sign"), r#","rv":"CKR_OK""#),
        ];
        let (out, _) = run(&bodies, &ShowOptions::new(Filter::default(), false));
        let sign = out.lines().find(|l| l.contains("C_Sign")).unwrap();
        assert!(sign.contains(" 77 ") && sign.contains(" 1001 "), "{out}");
        assert!(sign.contains("/usr/bin/pkcs11-tool"), "{out}");
        assert!(sign.contains("via pid 1 uid 0 /bin/p1"), "{out}");
        assert!(sign.contains("auid 1000"), "{out}");
        for f in [
            Filter {
                uids: vec![1001],
                ..Default::default()
            },
            Filter {
                pids: vec![77],
                ..Default::default()
            },
        ] {
            let (out, _) = run(&bodies, &ShowOptions::new(f, false));
            assert_eq!(
                out.lines().filter(|l| l.contains("C_Sign")).count(),
                1,
                "{out}"
            );
        }
    }
}
