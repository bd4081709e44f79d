//! The report for people: the verdict on the log first, then one section per question, each
//! written by its own function in the order they appear. Everything taken from the log is
//! escaped.

use super::model::{Report, Who};
use super::MAX_PENDING;
use crate::reader::table::table;
use crate::reader::text::escape;
use crate::reader::verify::render::problem_text;
use crate::reader::view::exe_text;
use std::fmt::Write as _;

/// The report for people: the verdict first, then one section per question.
pub fn render_human(r: &Report) -> String {
    let mut o = String::new();
    verdict(&mut o, r);
    keys(&mut o, r);
    lifecycle(&mut o, r);
    logins(&mut o, r);
    processes(&mut o, r);
    gaps(&mut o, r);
    unclean_closes(&mut o, r);
    without_outcome(&mut o, r);
    unreadable(&mut o, r);
    o
}

/// Rows in aligned columns, two spaces apart, each line indented by `indent`.
fn columns(o: &mut String, indent: &str, rows: &[Vec<String>]) {
    table(o, indent, "  ", rows);
}

/// `TS by uid U pid P EXE (FUNCTION MECHANISM)`.
fn who_text(w: &Who) -> String {
    let mut s = format!(
        "{} by uid {} pid {} {}",
        escape(&w.ts),
        w.uid,
        w.pid,
        exe_text(&w.exe)
    );
    let what: Vec<String> = [&w.function, &w.mechanism]
        .into_iter()
        .flatten()
        .map(|x| escape(x))
        .collect();
    if !what.is_empty() {
        let _ = write!(s, " ({})", what.join(" "));
    }
    s
}

/// Whether the log verified (and what the report covers if not), the period, the log's first
/// and last times, and the bounds that were reached.
fn verdict(o: &mut String, r: &Report) {
    let v = &r.verification;
    let seqs = match (v.first_seq, v.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}..{b})"),
        _ => String::new(),
    };
    match &v.problem {
        None => match v.end_unchecked {
            None => {
                let _ = writeln!(
                    o,
                    "VERIFIED: chain intact, {} records{seqs}, its end checked against the state file",
                    v.records
                );
            }
            Some(why) => {
                let _ = writeln!(
                    o,
                    "VERIFIED AS FAR AS IT GOES: chain intact, {} records{seqs}, but its end was not checked: {}",
                    v.records,
                    why.describe(v.state_next_seq, v.next_seq)
                );
            }
        },
        Some(p) => {
            let _ = writeln!(
                o,
                "NOT VERIFIED: the log did not verify: {}",
                problem_text(p)
            );
            let _ = writeln!(
                o,
                "This report covers only the {} record(s){seqs} before the problem; nothing after it was read.",
                v.records
            );
        }
    }
    let bound = |b: &Option<String>, open: &str| b.clone().unwrap_or_else(|| open.to_string());
    let _ = writeln!(
        o,
        "Period: {} .. {}; {} record(s) in the period",
        bound(&r.period.since, "(start)"),
        bound(&r.period.until, "(end)"),
        r.records
    );
    if let (Some(a), Some(b)) = (&v.first_ts, &v.last_ts) {
        let _ = writeln!(o, "Log: {} .. {}", escape(a), escape(b));
    }
    if !r.limits_reached.is_empty() {
        let _ = writeln!(
            o,
            "LIMITS REACHED (these lists are incomplete; totals are exact): {}",
            r.limits_reached.join(", ")
        );
    }
}

/// Every key and object: its calls, what it was used for and by whom, its lifecycle.
fn keys(o: &mut String, r: &Report) {
    let _ = writeln!(o, "\nKEYS AND OBJECTS ({})", r.keys.len());
    if r.keys.is_empty() {
        o.push_str("  none\n");
    }
    for k in &r.keys {
        let _ = writeln!(o, "  {}", k.key.display());
        if k.calls > 0 {
            let _ = writeln!(
                o,
                "    {} call(s), {} failed; first {}, last {}",
                k.calls,
                k.failed,
                escape(k.first_use.as_deref().unwrap_or("-")),
                escape(k.last_use.as_deref().unwrap_or("-"))
            );
            let rows: Vec<Vec<String>> = k
                .used_for
                .iter()
                .map(|u| {
                    let mut row = vec![
                        escape(&u.function),
                        u.mechanism.as_deref().map_or_else(|| "-".into(), escape),
                        format!("ok {}", u.ok),
                        format!("failed {}", u.failed),
                    ];
                    if u.length_queries > 0 {
                        row.push(format!("length queries {}", u.length_queries));
                    }
                    row
                })
                .collect();
            o.push_str("    used for:\n");
            columns(o, "      ", &rows);
            let rows: Vec<Vec<String>> = k
                .used_by
                .iter()
                .map(|u| {
                    vec![
                        format!("uid {}", u.uid),
                        exe_text(&u.exe),
                        format!("{} call(s)", u.calls),
                    ]
                })
                .collect();
            o.push_str("    used by:\n");
            columns(o, "      ", &rows);
        }
        if !k.lifecycle.is_empty() {
            o.push_str("    lifecycle:\n");
            let rows: Vec<Vec<String>> = k
                .lifecycle
                .iter()
                .map(|l| {
                    let times = if l.count > 1 {
                        format!("{}x, first", l.count)
                    } else {
                        String::new()
                    };
                    vec![l.event.clone(), times, who_text(&l.first)]
                })
                .collect();
            columns(o, "      ", &rows);
        }
    }
}

/// Lifecycle events of all keys, per event.
fn lifecycle(o: &mut String, r: &Report) {
    o.push_str("\nKEY LIFECYCLE\n");
    if r.lifecycle_totals.is_empty() {
        o.push_str(
            "  no key created, imported, derived, unwrapped, changed, wrapped or destroyed\n",
        );
    } else {
        let rows: Vec<Vec<String>> = r
            .lifecycle_totals
            .iter()
            .map(|(e, n)| vec![e.clone(), n.to_string()])
            .collect();
        columns(o, "  ", &rows);
    }
}

/// Logins per user type, failed logins grouped, and bursts of failures.
fn logins(o: &mut String, r: &Report) {
    let l = &r.logins;
    o.push_str("\nLOGINS\n");
    if l.per_user_type.is_empty() {
        o.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = l
            .per_user_type
            .iter()
            .map(|u| {
                let mut row = vec![
                    escape(&u.user_type),
                    format!("ok {}", u.ok),
                    format!("failed {}", u.failed),
                ];
                if u.already_logged_in > 0 {
                    row.push(format!("already logged in {}", u.already_logged_in));
                }
                row
            })
            .collect();
        columns(o, "  ", &rows);
    }
    let _ = writeln!(
        o,
        "  failed logins: {}; PIN locked (CKR_PIN_LOCKED): {}",
        l.failed_total, l.pin_locked
    );
    if !l.failed.is_empty() {
        let rows: Vec<Vec<String>> = l
            .failed
            .iter()
            .map(|f| {
                vec![
                    format!("uid {}", f.uid),
                    format!("pid {}", f.pid),
                    exe_text(&f.exe),
                    escape(&f.user_type),
                    escape(&f.rv),
                    format!("{}x", f.count),
                    if f.count > 1 {
                        format!("{} .. {}", escape(&f.first_ts), escape(&f.last_ts))
                    } else {
                        escape(&f.first_ts)
                    },
                ]
            })
            .collect();
        columns(o, "    ", &rows);
    }
    if l.bursts.is_empty() {
        let _ = writeln!(o, "  bursts ({}): none", l.burst_rule);
    } else {
        let _ = writeln!(o, "  BURSTS ({}):", l.burst_rule);
        for b in &l.bursts {
            let exe = b
                .exe
                .as_ref()
                .map(|e| format!(" ({})", exe_text(e)))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "    {} failed logins from {} {}{exe} between {} and {}",
                b.failures, b.by, b.id, b.start, b.end
            );
        }
    }
}

/// One row per process: records, attach and close, sessions, logins.
fn processes(o: &mut String, r: &Report) {
    o.push_str("\nSESSIONS PER PROCESS\n");
    if r.processes.is_empty() {
        o.push_str("  none\n");
        return;
    }
    // The CLIENT column only for logs of serving processes (`peer` in their records).
    let clients = r.processes.iter().any(|p| p.peer.is_some());
    let mut header = vec!["PID".to_string(), "UID".into(), "EXE".into()];
    if clients {
        header.push("CLIENT".into());
    }
    header.extend(
        [
            "RECORDS",
            "ATTACH",
            "CLOSE",
            "SESSIONS OPENED",
            "CLOSED",
            "CLOSE ALL",
            "LOGINS",
            "FAILED LOGINS",
            "FIRST",
            "LAST",
        ]
        .map(String::from),
    );
    let mut rows = vec![header];
    for p in &r.processes {
        let mut row = vec![p.pid.to_string(), p.uid.to_string(), exe_text(&p.exe)];
        if clients {
            row.push(p.peer.as_ref().map_or_else(
                || "-".to_string(),
                |c| {
                    let exe = c.exe.as_ref().map_or_else(|| "-".to_string(), exe_text);
                    format!("pid {} uid {} {exe}", c.pid, c.uid)
                },
            ));
        }
        row.extend([
            p.records.to_string(),
            p.attached.to_string(),
            p.closed.to_string(),
            p.sessions_opened.to_string(),
            p.sessions_closed.to_string(),
            p.close_all_sessions.to_string(),
            p.logins.to_string(),
            p.failed_logins.to_string(),
            escape(&p.first_ts),
            escape(&p.last_ts),
        ]);
        rows.push(row);
    }
    columns(o, "  ", &rows);
}

/// Gap records, and what the state file counts as lost and not yet reported.
fn gaps(o: &mut String, r: &Report) {
    o.push_str("\nGAPS AND REFUSALS\n");
    let unreported = r.verification.unreported_lost.as_ref();
    if r.gaps.count == 0 && unreported.is_none() {
        o.push_str(
            "  no gap records: no record was lost and no call was refused for want of a log\n",
        );
    } else if r.gaps.count == 0 {
        o.push_str("  no gap records\n");
    } else {
        let _ = writeln!(
            o,
            "  {} gap record(s), {} record(s) lost (calls refused fail-closed, calls that went ahead unrecorded, records that were waiting)",
            r.gaps.count, r.gaps.lost
        );
        for g in &r.gaps.list {
            let since = g
                .since
                .as_deref()
                .map(|s| format!(" since {}", escape(s)))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "    seq {} {} reported by pid {} {}: {} lost{since}",
                g.seq,
                escape(&g.ts),
                g.pid,
                exe_text(&g.exe),
                g.lost
            );
        }
    }

    if let Some(u) = unreported {
        let _ = writeln!(o, "  and the state file counts {}", escape(&u.describe()));
    }
}

/// Processes that attached and did not close.
fn unclean_closes(o: &mut String, r: &Report) {
    o.push_str("\nUNCLEAN CLOSES (attach without close)\n");
    if r.unclean_closes.count == 0 {
        o.push_str("  none\n");
    } else {
        let _ = writeln!(o, "  {} process(es)", r.unclean_closes.count);
        let rows: Vec<Vec<String>> = r
            .unclean_closes
            .list
            .iter()
            .map(|u| {
                vec![
                    format!("pid {}", u.pid),
                    format!("uid {}", u.uid),
                    exe_text(&u.exe),
                    format!("attached {}", escape(&u.attached)),
                    u.why.to_string(),
                ]
            })
            .collect();
        columns(o, "    ", &rows);
    }
}

/// Intents whose outcome is not in the log.
fn without_outcome(o: &mut String, r: &Report) {
    let w = &r.without_outcome;
    o.push_str("\nCALLS WITHOUT OUTCOME (intent only)\n");
    if w.count == 0 && w.given_up == 0 {
        o.push_str("  none\n");
    } else {
        let _ = writeln!(o, "  {} call(s)", w.count);
        if !r.verification.intact && w.count > 0 {
            o.push_str(
                "  (the log stopped verifying: some of these outcomes may be past the problem)\n",
            );
        }
        for c in &w.list {
            let _ = writeln!(o, "    seq {} {}", c.seq, who_text(c));
        }
        if w.given_up > 0 {
            let _ = writeln!(
                o,
                "  {} more intent(s) not followed: more than {MAX_PENDING} were waiting at once",
                w.given_up
            );
        }
    }
}

/// Verified records the report could not read.
fn unreadable(o: &mut String, r: &Report) {
    if r.unreadable_records > 0 {
        let _ = writeln!(
            o,
            "\n{} verified record(s) could not be read as p11audit records",
            r.unreadable_records
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::report::testing::run;
    use crate::reader::testlog::body;
    use crate::reader::Period;

    /// An exe recorded as hex is a process of its own, printed so that it cannot
    /// pass for another path (its bytes that are not UTF-8 as `\xNN`, a backslash from a text
    /// path doubled), and kept as `{"hex": …}` in the JSON.
    #[test]
    fn exe_paths_in_hex_stay_apart_and_print_unambiguously() {
        let attach = |exe: &str| {
            body(1, 1, 0, "attach", Some("C_Initialize"), r#","rv":"CKR_OK""#)
                .replace(r#""exe":"/bin/p1""#, &format!(r#""exe":{exe}"#))
        };
        let bodies = [
            attach(r#"{"hex":"2f746d702f61ff"}"#),
            attach(r#"{"hex":"2f746d702f61fe"}"#),
            attach(r#""/tmp/a\\xff""#),
            attach(r#"{"hex":"2f746d702f61ff"}"#),
        ];
        let r = run(&bodies, Period::default());
        let rows: Vec<(String, u64)> = r
            .processes
            .iter()
            .map(|p| (exe_text(&p.exe), p.records))
            .collect();
        assert_eq!(
            rows,
            [
                (r"/tmp/a\xff".to_string(), 2),
                (r"/tmp/a\xfe".to_string(), 1),
                (r"/tmp/a\\xff".to_string(), 1)
            ]
        );
        let human = render_human(&r);
        for want in [r"/tmp/a\xff", r"/tmp/a\xfe", r"/tmp/a\\xff"] {
            assert!(human.contains(want), "{want} not in\n{human}");
        }
        assert!(!human.contains('\u{fffd}'), "{human}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["processes"][0]["exe"]["hex"], "2f746d702f61ff");
        assert_eq!(j["processes"][2]["exe"], r"/tmp/a\xff");
    }
}
