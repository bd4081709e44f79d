//! Aggregating verified records into a report as the walk passes them: maps keyed by key,
//! process, user type and so on, each bounded, and the matching of intents with outcomes and
//! of attaches with closes.

use super::model::{
    Burst, FailedLogins, GapReport, Gaps, KeyRef, KeyReport, LifecycleReport, Logins, PeriodText,
    ProcessReport, Report, Unclean, UncleanProcess, UseReport, UserReport, UserTypeLogins,
    Verification, Who, WithoutOutcome,
};
use super::{ReportOptions, MAX_AGGREGATES, MAX_PENDING, MAX_ROWS};
use crate::format::record::{Bytes, PeerIdentity};
use crate::reader::view::RecView;
use crate::reader::{format_micros, parse_ts};
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Default)]
struct UseCount {
    ok: u64,
    failed: u64,
    length_queries: u64,
}

struct LifeAgg {
    count: u64,
    first: Who,
    last_ts: String,
}

#[derive(Default)]
struct KeyAgg {
    first_seq: u64,
    calls: u64,
    failed: u64,
    first_use: Option<String>,
    last_use: Option<String>,
    uses: BTreeMap<(String, Option<String>), UseCount>,
    users: BTreeMap<(u32, Bytes), u64>,
    life: BTreeMap<&'static str, LifeAgg>,
}

struct ProcAgg {
    first_seq: u64,
    uid: u32,
    /// The client the process served, if it served one.
    peer: Option<PeerIdentity>,
    records: u64,
    first_ts: String,
    last_ts: String,
    attached: u64,
    closed: u64,
    sessions_opened: u64,
    sessions_closed: u64,
    close_all_sessions: u64,
    logins: u64,
    failed_logins: u64,
}

struct OpenProc {
    uid: u32,
    exe: Bytes,
    ts: String,
    seq: u64,
    in_period: bool,
}

struct FailAgg {
    count: u64,
    first_ts: String,
    last_ts: String,
}

#[derive(Default)]
struct Window {
    recent: VecDeque<i64>,
    /// Index of the burst this window is extending.
    active: Option<usize>,
}

/// A report in the making: bounded aggregates of the records seen so far.
pub(super) struct Aggregator<'o> {
    opts: &'o ReportOptions,
    limits: BTreeMap<&'static str, ()>,
    records: u64,
    unreadable: u64,
    keys: HashMap<KeyRef, KeyAgg>,
    lifecycle_totals: BTreeMap<String, u64>,
    user_types: BTreeMap<String, (u64, u64, u64)>,
    failed_total: u64,
    pin_locked: u64,
    failed: HashMap<(u32, u32, Bytes, String, String), FailAgg>,
    windows: HashMap<(&'static str, u32), Window>,
    bursts: Vec<Burst>,
    burst_ends: Vec<i64>,
    bursts_total: u64,
    /// Per pid, per exe (looked up without building a key for every record).
    procs: HashMap<u32, Vec<(Bytes, ProcAgg)>>,
    proc_count: usize,
    open: HashMap<u32, OpenProc>,
    unclean: Unclean,
    gaps: Gaps,
    pending: BTreeMap<u64, Who>,
    without_outcome: WithoutOutcome,
}

/// The lifecycle event a successful call with `created` objects is.
fn creation_event(function: &str) -> &'static str {
    match function {
        "C_GenerateKey" | "C_GenerateKeyPair" => "generated",
        "C_CreateObject" => "imported",
        "C_CopyObject" => "copied",
        "C_DeriveKey" => "derived",
        "C_UnwrapKey" | "C_UnwrapKeyAuthenticated" => "unwrapped",
        "C_DecapsulateKey" => "decapsulated",
        "C_EncapsulateKey" => "encapsulated",
        _ => "created",
    }
}

/// How a call used its second key.
fn key2_role(function: &str) -> &'static str {
    match function {
        "C_WrapKey" | "C_WrapKeyAuthenticated" => "wrapped",
        "C_DigestKey" => "digested",
        _ => "key2",
    }
}

impl<'o> Aggregator<'o> {
    pub(super) fn new(opts: &'o ReportOptions) -> Self {
        Aggregator {
            opts,
            limits: BTreeMap::new(),
            records: 0,
            unreadable: 0,
            keys: HashMap::new(),
            lifecycle_totals: BTreeMap::new(),
            user_types: BTreeMap::new(),
            failed_total: 0,
            pin_locked: 0,
            failed: HashMap::new(),
            windows: HashMap::new(),
            bursts: Vec::new(),
            burst_ends: Vec::new(),
            bursts_total: 0,
            procs: HashMap::new(),
            proc_count: 0,
            open: HashMap::new(),
            unclean: Unclean::default(),
            gaps: Gaps::default(),
            pending: BTreeMap::new(),
            without_outcome: WithoutOutcome::default(),
        }
    }

    fn limit(&mut self, what: &'static str) {
        self.limits.insert(what, ());
    }

    /// The aggregate of `key`, unless the bound on keys is reached.
    fn key(&mut self, key: KeyRef, seq: u64) -> Option<&mut KeyAgg> {
        if !self.keys.contains_key(&key) && self.keys.len() >= MAX_AGGREGATES {
            self.limit("keys");
            return None;
        }
        Some(self.keys.entry(key).or_insert_with(|| KeyAgg {
            first_seq: seq,
            ..Default::default()
        }))
    }

    pub(super) fn on_record(&mut self, line: &[u8]) {
        let r = match RecView::parse(line) {
            Ok(r) => r,
            Err(_) => {
                self.unreadable += 1;
                return;
            }
        };
        let in_period = self.opts.period.contains(&r.ts);
        // Matching intents with outcomes, and attaches with closes, looks past the period's end.
        match &*r.ev {
            "intent" if in_period => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_first();
                    self.without_outcome.given_up += 1;
                }
                self.pending.insert(r.seq, Who::of(&r));
            }
            "outcome" => {
                if let Some(i) = r.intent {
                    self.pending.remove(&i);
                    // A C_Initialize the provider failed attached nothing: the attach written
                    // just before its intent is not an open process (FORMAT.md §3, `attach`).
                    let attach_failed = r.function() == Some("C_Initialize")
                        && !matches!(r.rv(), Some("CKR_OK" | "CKR_CRYPTOKI_ALREADY_INITIALIZED"));
                    if attach_failed && self.open.get(&r.pid).is_some_and(|p| p.seq + 1 == i) {
                        self.open.remove(&r.pid);
                    }
                }
            }
            "attach" => {
                if let Some(prev) = self.open.remove(&r.pid) {
                    self.unclean_process(r.pid, prev, "attached again without a close");
                }
                if self.open.len() >= MAX_AGGREGATES {
                    self.limit("open processes");
                } else {
                    self.open.insert(
                        r.pid,
                        OpenProc {
                            uid: r.uid,
                            exe: r.exe.clone(),
                            ts: r.ts.to_string(),
                            seq: r.seq,
                            in_period,
                        },
                    );
                }
            }
            "close" => {
                self.open.remove(&r.pid);
            }
            _ => {}
        }
        if !in_period {
            return;
        }
        self.records += 1;
        self.process(&r);
        match &*r.ev {
            "gap" => {
                self.gaps.count += 1;
                self.gaps.lost = self.gaps.lost.saturating_add(r.lost.unwrap_or(0));
                if self.gaps.list.len() < MAX_ROWS {
                    self.gaps.list.push(GapReport {
                        seq: r.seq,
                        ts: r.ts.to_string(),
                        pid: r.pid,
                        exe: r.exe.clone(),
                        lost: r.lost.unwrap_or(0),
                        since: r.since.as_deref().map(str::to_string),
                    });
                } else {
                    self.limit("gaps");
                }
            }
            "outcome" => self.outcome(&r),
            _ => {}
        }
    }

    fn unclean_process(&mut self, pid: u32, p: OpenProc, why: &'static str) {
        if !p.in_period {
            return;
        }
        self.unclean.count += 1;
        if self.unclean.list.len() < MAX_ROWS {
            self.unclean.list.push(UncleanProcess {
                pid,
                uid: p.uid,
                exe: p.exe,
                attached: p.ts,
                attach_seq: p.seq,
                why,
            });
        } else {
            self.limit("unclean closes");
        }
    }

    fn proc_mut(&mut self, pid: u32, exe: &Bytes) -> Option<&mut ProcAgg> {
        self.procs
            .get_mut(&pid)?
            .iter_mut()
            .find(|(e, _)| e == exe)
            .map(|(_, p)| p)
    }

    fn process(&mut self, r: &RecView) {
        if self.proc_mut(r.pid, &r.exe).is_none() {
            if self.proc_count >= MAX_AGGREGATES {
                self.limit("processes");
                return;
            }
            self.proc_count += 1;
            self.procs.entry(r.pid).or_default().push((
                r.exe.clone(),
                ProcAgg {
                    first_seq: r.seq,
                    uid: r.uid,
                    peer: r.peer.clone(),
                    records: 0,
                    first_ts: r.ts.to_string(),
                    last_ts: String::new(),
                    attached: 0,
                    closed: 0,
                    sessions_opened: 0,
                    sessions_closed: 0,
                    close_all_sessions: 0,
                    logins: 0,
                    failed_logins: 0,
                },
            ));
        }
        let Some(p) = self.proc_mut(r.pid, &r.exe) else {
            return;
        };
        p.records += 1;
        p.last_ts.clear();
        p.last_ts.push_str(&r.ts);
        let ok = r.rv() == Some("CKR_OK");
        match (&*r.ev, r.function()) {
            ("attach", _) => p.attached += 1,
            ("close", _) => p.closed += 1,
            ("outcome", Some("C_OpenSession")) if ok => p.sessions_opened += 1,
            ("outcome", Some("C_CloseSession")) if ok => p.sessions_closed += 1,
            ("outcome", Some("C_CloseAllSessions")) if ok => p.close_all_sessions += 1,
            _ => {}
        }
    }

    fn outcome(&mut self, r: &RecView) {
        let Some(function) = r.function() else {
            return;
        };
        let ok = r.rv() == Some("CKR_OK");
        if matches!(function, "C_Login" | "C_LoginUser") {
            self.login(r);
        }
        let length_query = matches!(r.out.as_deref(), Some("length_query" | "buffer_too_small"));
        let mech = r
            .mechanism
            .as_ref()
            .map(|m| m.mechanism.as_str().to_string());
        let uses = [
            r.key.as_ref().map(|k| (k, function.to_string())),
            r.key2
                .as_ref()
                .map(|k| (k, format!("{function} ({})", key2_role(function)))),
        ];
        for (i, used) in uses.into_iter().enumerate() {
            let Some((ident, what)) = used else {
                continue;
            };
            let Some(agg) = self.key(KeyRef::of(ident, r.pid), r.seq) else {
                continue;
            };
            // Length queries counted in this outcome, and the init it tells (which used the
            // operation's key, `key`), were calls of their own, as they are when written on
            // their own (FORMAT.md §5).
            let counted_queries = r.len_queries.unwrap_or(0);
            let init = r.init.as_ref().filter(|_| i == 0);
            agg.calls += 1 + counted_queries + u64::from(init.is_some());
            if !ok {
                agg.failed += 1;
            }
            if agg.first_use.is_none() {
                let began = init.map_or(&r.ts, |init| &init.ts);
                agg.first_use = Some(began.to_string());
            }
            agg.last_use = Some(r.ts.to_string());
            let mut full = false;
            if let Some(init) = init {
                let init_key = (init.function.to_string(), mech.clone());
                full = agg.uses.len() >= MAX_ROWS && !agg.uses.contains_key(&init_key);
                if !full {
                    agg.uses.entry(init_key).or_default().ok += 1;
                }
            }
            let use_key = (what, mech.clone());
            full |= agg.uses.len() >= MAX_ROWS && !agg.uses.contains_key(&use_key);
            if !full {
                let u = agg.uses.entry(use_key).or_default();
                u.length_queries += counted_queries;
                if length_query {
                    u.length_queries += 1;
                } else if ok {
                    u.ok += 1;
                } else {
                    u.failed += 1;
                }
            }
            let who = r.who();
            let user_key = (who.uid, who.exe_bytes());
            let full_users = agg.users.len() >= MAX_ROWS && !agg.users.contains_key(&user_key);
            if !full_users {
                // The same calls as `calls`: the length queries and init it tells too.
                *agg.users.entry(user_key).or_default() +=
                    1 + counted_queries + u64::from(init.is_some());
            }
            if full || full_users {
                self.limit("rows per key");
            }
        }
        if !ok {
            return;
        }
        let event = creation_event(function);
        for c in &r.created {
            self.life(KeyRef::of(c, r.pid), event, r);
        }
        let on_key = match function {
            "C_DestroyObject" => Some("destroyed"),
            "C_SetAttributeValue" => Some("attributes changed"),
            _ => None,
        };
        if let (Some(ev), Some(k)) = (on_key, &r.key) {
            self.life(KeyRef::of(k, r.pid), ev, r);
        }
        if matches!(function, "C_WrapKey" | "C_WrapKeyAuthenticated") {
            if let Some(k) = &r.key2 {
                self.life(KeyRef::of(k, r.pid), "wrapped", r);
            }
        }
    }

    fn life(&mut self, key: KeyRef, event: &'static str, r: &RecView) {
        *self.lifecycle_totals.entry(event.to_string()).or_default() += 1;
        let Some(agg) = self.key(key, r.seq) else {
            return;
        };
        match agg.life.get_mut(event) {
            Some(l) => {
                l.count += 1;
                l.last_ts = r.ts.to_string();
            }
            None => {
                agg.life.insert(
                    event,
                    LifeAgg {
                        count: 1,
                        first: Who::of(r),
                        last_ts: r.ts.to_string(),
                    },
                );
            }
        }
    }

    fn login(&mut self, r: &RecView) {
        let user_type = r.user_type.as_deref().unwrap_or("(none)").to_string();
        let rv = r.rv().unwrap_or("(none)");
        let row = self.user_types.entry(user_type.clone()).or_default();
        match rv {
            "CKR_OK" => row.0 += 1,
            "CKR_USER_ALREADY_LOGGED_IN" => row.2 += 1,
            _ => row.1 += 1,
        }
        let p = self.proc_mut(r.pid, &r.exe);
        if rv == "CKR_OK" {
            if let Some(p) = p {
                p.logins += 1;
            }
            return;
        }
        if rv == "CKR_USER_ALREADY_LOGGED_IN" {
            return;
        }
        if let Some(p) = p {
            p.failed_logins += 1;
        }
        self.failed_total += 1;
        if rv == "CKR_PIN_LOCKED" {
            self.pin_locked += 1;
        }
        let who = r.who();
        let exe = who.exe_bytes();
        let k = (who.uid, who.pid, exe.clone(), user_type, rv.to_string());
        let room = self.failed.len() < MAX_AGGREGATES;
        match self.failed.get_mut(&k) {
            Some(f) => {
                f.count += 1;
                f.last_ts = r.ts.to_string();
            }
            None if room => {
                self.failed.insert(
                    k,
                    FailAgg {
                        count: 1,
                        first_ts: r.ts.to_string(),
                        last_ts: r.ts.to_string(),
                    },
                );
            }
            None => self.limit("failed-login groups"),
        }
        if let Some(t) = parse_ts(&r.ts) {
            self.burst(("pid", who.pid), Some(&exe), t);
            self.burst(("uid", who.uid), None, t);
        }
    }

    /// Counts a failed login at `t` towards bursts of `who`.
    fn burst(&mut self, who: (&'static str, u32), exe: Option<&Bytes>, t: i64) {
        let (n, window) = (self.opts.burst_failures.max(1), self.opts.burst_window_us);
        if !self.windows.contains_key(&who) && self.windows.len() >= MAX_AGGREGATES {
            self.limit("burst windows");
            return;
        }
        let w = self.windows.entry(who).or_default();
        w.recent.push_back(t);
        if w.recent.len() > n {
            w.recent.pop_front();
        }
        if let Some(i) = w.active {
            // Still the same burst while failures keep coming within the window.
            if (t - self.burst_ends[i]).abs() <= window {
                self.burst_ends[i] = self.burst_ends[i].max(t);
                if let Some(b) = self.bursts.get_mut(i) {
                    b.failures += 1;
                    b.end = format_micros(self.burst_ends[i]);
                }
                return;
            }
            w.active = None;
        }
        let (lo, hi) = w
            .recent
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        if w.recent.len() == n && hi - lo <= window {
            self.bursts_total += 1;
            if self.bursts.len() >= MAX_ROWS {
                self.limit("bursts");
                return;
            }
            w.active = Some(self.bursts.len());
            self.burst_ends.push(hi);
            self.bursts.push(Burst {
                by: who.0,
                id: who.1,
                exe: exe.cloned(),
                failures: n as u64,
                start: format_micros(lo),
                end: format_micros(hi),
            });
        }
    }

    pub(super) fn finish(mut self, verification: Verification) -> Report {
        let open: Vec<(u32, OpenProc)> = {
            let mut v: Vec<_> = self.open.drain().collect();
            v.sort_by_key(|(_, p)| p.seq);
            v
        };
        for (pid, p) in open {
            self.unclean_process(pid, p, "no close in the log");
        }
        self.unclean.list.sort_by_key(|u| u.attach_seq);
        self.without_outcome.count = self.pending.len() as u64;
        self.without_outcome.list = std::mem::take(&mut self.pending)
            .into_values()
            .take(MAX_ROWS)
            .collect();
        if self.without_outcome.count as usize > MAX_ROWS {
            self.limit("calls without outcome");
        }

        let mut keys: Vec<(KeyRef, KeyAgg)> = self.keys.drain().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.first_seq.cmp(&b.1.first_seq)));
        let keys = keys
            .into_iter()
            .map(|(key, a)| {
                let mut used_by: Vec<UserReport> = a
                    .users
                    .into_iter()
                    .map(|((uid, exe), calls)| UserReport { uid, exe, calls })
                    .collect();
                used_by.sort_by_key(|u| std::cmp::Reverse(u.calls));
                KeyReport {
                    key,
                    calls: a.calls,
                    failed: a.failed,
                    first_use: a.first_use,
                    last_use: a.last_use,
                    used_for: a
                        .uses
                        .into_iter()
                        .map(|((function, mechanism), u)| UseReport {
                            function,
                            mechanism,
                            ok: u.ok,
                            failed: u.failed,
                            length_queries: u.length_queries,
                        })
                        .collect(),
                    used_by,
                    lifecycle: {
                        let mut l: Vec<LifecycleReport> = a
                            .life
                            .into_iter()
                            .map(|(event, l)| LifecycleReport {
                                event: event.to_string(),
                                count: l.count,
                                first: l.first,
                                last_ts: l.last_ts,
                            })
                            .collect();
                        l.sort_by_key(|l| l.first.seq);
                        l
                    },
                }
            })
            .collect();

        let mut failed: Vec<FailedLogins> = std::mem::take(&mut self.failed)
            .into_iter()
            .map(|((uid, pid, exe, user_type, rv), f)| FailedLogins {
                uid,
                pid,
                exe,
                user_type,
                rv,
                count: f.count,
                first_ts: f.first_ts,
                last_ts: f.last_ts,
            })
            .collect();
        failed.sort_by(|a, b| a.first_ts.cmp(&b.first_ts).then(a.pid.cmp(&b.pid)));
        if failed.len() > MAX_ROWS {
            self.limit("failed logins");
            failed.truncate(MAX_ROWS);
        }

        let mut procs: Vec<((u32, Bytes), ProcAgg)> = self
            .procs
            .into_iter()
            .flat_map(|(pid, v)| v.into_iter().map(move |(exe, p)| ((pid, exe), p)))
            .collect();
        procs.sort_by_key(|(_, p)| p.first_seq);
        let processes = procs
            .into_iter()
            .map(|((pid, exe), p)| ProcessReport {
                pid,
                exe,
                uid: p.uid,
                peer: p.peer,
                records: p.records,
                first_ts: p.first_ts,
                last_ts: p.last_ts,
                attached: p.attached,
                closed: p.closed,
                sessions_opened: p.sessions_opened,
                sessions_closed: p.sessions_closed,
                close_all_sessions: p.close_all_sessions,
                logins: p.logins,
                failed_logins: p.failed_logins,
            })
            .collect();

        let fmt_bound = |b: Option<i64>| b.map(format_micros);
        Report {
            verification,
            period: PeriodText {
                since: fmt_bound(self.opts.period.since),
                until: fmt_bound(self.opts.period.until),
            },
            records: self.records,
            keys,
            lifecycle_totals: self.lifecycle_totals,
            logins: Logins {
                per_user_type: self
                    .user_types
                    .into_iter()
                    .map(|(user_type, (ok, failed, already))| UserTypeLogins {
                        user_type,
                        ok,
                        failed,
                        already_logged_in: already,
                    })
                    .collect(),
                failed_total: self.failed_total,
                pin_locked: self.pin_locked,
                failed,
                bursts: self.bursts,
                burst_rule: format!(
                    "at least {} failed logins within {} s from one pid or one uid",
                    self.opts.burst_failures,
                    self.opts.burst_window_us as f64 / 1e6
                ),
            },
            processes,
            gaps: self.gaps,
            unclean_closes: self.unclean,
            without_outcome: self.without_outcome,
            unreadable_records: self.unreadable,
            limits_reached: self.limits.into_keys().map(str::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::Named;
    use crate::reader::report::render_human;
    use crate::reader::report::testing::{login, run};
    use crate::reader::testlog::body;
    use crate::reader::Period;

    #[test]
    fn pin_locked_and_bursts_within_the_window_only() {
        let mut bodies = Vec::new();
        // pid 1: five failures in 40 s (a burst), a sixth 10 s later (the same burst).
        for s in [0, 10, 20, 30, 40, 50] {
            bodies.push(login(s, 1, 100, "CKR_PIN_INCORRECT"));
        }
        // Later, after a pause: four quick ones are not yet a burst, the fifth makes one.
        bodies.push(login(200, 1, 100, "CKR_PIN_INCORRECT"));
        for s in [300, 301, 302, 303] {
            bodies.push(login(s, 1, 100, "CKR_PIN_INCORRECT"));
        }
        bodies.push(login(304, 1, 100, "CKR_PIN_LOCKED"));
        // pid 2 (another uid): five failures spread over 80 s: no burst.
        for s in [0, 20, 40, 60, 80] {
            bodies.push(login(s, 2, 200, "CKR_PIN_INCORRECT"));
        }
        bodies.push(login(90, 2, 200, "CKR_USER_ALREADY_LOGGED_IN"));
        bodies.push(login(91, 2, 200, "CKR_OK"));
        let r = run(&bodies, Period::default());
        let l = &r.logins;
        assert_eq!(l.failed_total, 17);
        assert_eq!(l.pin_locked, 1);
        let u = &l.per_user_type[0];
        assert_eq!((u.ok, u.failed, u.already_logged_in), (1, 17, 1));
        let summary: Vec<(&str, u32, u64, &str)> = l
            .bursts
            .iter()
            .map(|b| (b.by, b.id, b.failures, b.start.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("pid", 1, 6, "2026-11-26T03:00:00.000000Z"),
                ("uid", 100, 6, "2026-11-26T03:00:00.000000Z"),
                ("pid", 1, 5, "2026-11-26T03:05:00.000000Z"),
                ("uid", 100, 5, "2026-11-26T03:05:00.000000Z"),
            ]
        );
        assert_eq!(l.bursts[0].end, "2026-11-26T03:00:50.000000Z");
        assert_eq!(l.bursts[0].exe, Some(Bytes::Text("/bin/p1".into())));
        let locked = l.failed.iter().find(|f| f.rv == "CKR_PIN_LOCKED").unwrap();
        assert_eq!((locked.pid, locked.count), (1, 1));
        let text = render_human(&r);
        assert!(text.contains("PIN locked (CKR_PIN_LOCKED): 1"), "{text}");
        assert!(
            text.contains("6 failed logins from pid 1 (/bin/p1) between"),
            "{text}"
        );
    }

    #[test]
    fn more_failed_login_groups_than_rows_is_a_limit_reached() {
        // One failed login from each of MAX_ROWS + 1 pids: one group (row) each.
        let bodies: Vec<String> = (0..=MAX_ROWS as u32)
            .map(|pid| login(1, pid + 1, 100, "CKR_PIN_INCORRECT"))
            .collect();
        let r = run(&bodies, Period::default());
        assert_eq!(r.logins.failed_total, MAX_ROWS as u64 + 1);
        assert_eq!(r.logins.failed.len(), MAX_ROWS);
        assert!(
            r.limits_reached.iter().any(|l| l == "failed logins"),
            "{:?}",
            r.limits_reached
        );
        let text = render_human(&r);
        let limits_line = text.lines().find(|l| l.starts_with("LIMITS REACHED"));
        assert!(
            limits_line.is_some_and(|l| l.ends_with(": failed logins")),
            "{text}"
        );

        // Exactly MAX_ROWS groups fit: no limit.
        let r = run(&bodies[..MAX_ROWS], Period::default());
        assert_eq!(r.logins.failed.len(), MAX_ROWS);
        assert!(r.limits_reached.is_empty(), "{:?}", r.limits_reached);
    }

    #[test]
    fn unclean_closes_gaps_and_the_period() {
        let bodies = [
            body(0, 7, 0, "attach", Some("C_Initialize"), ""),
            // pid 7 again without a close: the first process did not close.
            body(10, 7, 0, "attach", Some("C_Initialize"), ""),
            body(20, 7, 0, "close", Some("C_Finalize"), ""),
            body(30, 8, 0, "attach", Some("C_Initialize"), ""),
            body(
                40,
                8,
                0,
                "gap",
                None,
                r#","lost":3,"since":"2026-11-26T03:00:35Z""#,
            ),
            body(
                50,
                8,
                0,
                "intent",
                Some("C_DestroyObject"),
                r#","key":{"handle":4,"label":"k"}"#,
            ),
        ];
        let r = run(&bodies, Period::default());
        let why: Vec<(u32, &str)> = r
            .unclean_closes
            .list
            .iter()
            .map(|u| (u.pid, u.why))
            .collect();
        assert_eq!(
            why,
            [
                (7, "attached again without a close"),
                (8, "no close in the log")
            ]
        );
        assert_eq!((r.gaps.count, r.gaps.lost), (1, 3));
        assert_eq!(r.without_outcome.count, 1);
        assert_eq!(
            r.without_outcome.list[0].function.as_deref(),
            Some("C_DestroyObject")
        );
        // An intent is not a use: the key has no calls (its outcome is missing).
        assert!(r.keys.is_empty());

        // From 35 s on: the gap and the intent; pid 8's attach (at 30 s) is outside.
        let r = run(
            &bodies,
            Period {
                since: crate::reader::parse_ts("2026-11-26T03:00:35Z"),
                until: None,
            },
        );
        assert_eq!(r.records, 2);
        assert_eq!(r.unclean_closes.count, 0);
        assert_eq!(r.gaps.count, 1);
        assert_eq!(r.without_outcome.count, 1);
    }

    #[test]
    fn keys_are_told_apart_by_class_and_anonymous_ones_by_process() {
        let sign = |pid: u32, key: &str, rv: &str| {
            body(
                1,
                pid,
                0,
                "outcome",
                Some("C_Sign"),
                &format!(
                    r#","rv":"{rv}","mechanism":{{"type":"CKM_ECDSA"}},"key":{key},"out":"returned""#
                ),
            )
        };
        let private = r#"{"handle":2,"class":"CKO_PRIVATE_KEY","label":"k","id":{"hex":"01"}}"#;
        let public = r#"{"handle":3,"class":"CKO_PUBLIC_KEY","label":"k","id":{"hex":"01"}}"#;
        let bodies = [
            sign(1, private, "CKR_OK"),
            sign(2, private, "CKR_KEY_HANDLE_INVALID"),
            sign(1, public, "CKR_OK"),
            sign(1, r#"{"handle":9}"#, "CKR_OK"),
            sign(2, r#"{"handle":9}"#, "CKR_OK"),
        ];
        let r = run(&bodies, Period::default());
        assert_eq!(r.keys.len(), 4);
        let k = r
            .keys
            .iter()
            .find(|k| k.key.class.as_ref().map(Named::as_str) == Some("CKO_PRIVATE_KEY"))
            .unwrap();
        assert_eq!((k.calls, k.failed), (2, 1));
        assert_eq!((k.used_for[0].ok, k.used_for[0].failed), (1, 1));
        assert_eq!(k.used_by.len(), 2);
        let anon: Vec<Option<u32>> = r
            .keys
            .iter()
            .filter(|k| k.key.handle == Some(9))
            .map(|k| k.key.pid)
            .collect();
        assert_eq!(anon, [Some(1), Some(2)]);
    }
}
