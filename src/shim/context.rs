//! What the shim remembers between calls so that every record stands on its own: which slot
//! and token a session belongs to, the login state of each token, the mechanism and key of each
//! active operation, and a cache of key identities.
//!
//! Login state is per token for the whole application (PKCS#11 2.40 §5.6: logging in on one
//! session logs in all sessions of that token), so it is tracked per slot.
//!
//! The maps are keyed by handles and slot ids, and use FxHash rather than SipHash, which exists
//! to resist keys chosen to collide. No key here comes from anyone who could gain by that: every
//! entry is made for a handle the provider handed out or accepted (a session it opened, an
//! object it answered for, a length query it answered CKR_OK), and both the provider and the
//! application run in this process, where they could slow its calls down in simpler ways.

use crate::format::record::{MechanismSummary, ObjectIdentity, Record, TokenRef};
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// The kinds of operation a session can have active at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Encrypt,
    Decrypt,
    Digest,
    Sign,
    Verify,
    SignRecover,
    VerifyRecover,
    Find,
    MessageEncrypt,
    MessageDecrypt,
    MessageSign,
    MessageVerify,
    VerifySignature,
}

const OP_COUNT: usize = 13;

impl Op {
    fn index(self) -> usize {
        self as usize
    }
}

/// The mechanism and key an operation was started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpContext {
    pub(crate) mechanism: Option<Arc<MechanismSummary>>,
    pub(crate) key: Option<Arc<ObjectIdentity>>,
}

/// Login state of a token as this application sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoginState {
    Public,
    User,
    So,
}

impl LoginState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LoginState::Public => "public",
            LoginState::User => "user",
            LoginState::So => "so",
        }
    }
}

#[derive(Default)]
struct SessionEntry {
    slot: u64,
    ops: [Option<OpContext>; OP_COUNT],
}

struct SlotEntry {
    token: Option<Arc<TokenRef>>,
    login: LoginState,
}

/// Key identities are cached up to this many handles; past it the cache starts over, so memory
/// stays bounded however many objects an application touches.
const MAX_CACHED_KEYS: usize = 4096;

/// At most this many length queries wait in one session; past it they go out on their own.
const MAX_HELD_LENGTH_QUERIES: usize = 16;

/// The outcomes of length queries (NULL output buffer) of one function in one session that
/// wait for that function's next outcome, which counts them instead (`len_queries`).
struct HeldLengthQueries {
    function: &'static str,
    outcomes: Vec<Record>,
}

/// The outcome of a successful *Init (a prepare call), held in its session for the first outcome
/// of the operation it started, which tells it (`init`) instead of a record of its own.
struct HeldInit {
    op: Op,
    outcome: Record,
}

/// Session, token and key context of one process.
#[derive(Default)]
pub(crate) struct CallContext {
    sessions: FxHashMap<u64, SessionEntry>,
    slots: FxHashMap<u64, SlotEntry>,
    keys: FxHashMap<u64, Arc<ObjectIdentity>>,
    /// Length queries and inits waiting, by session, and the pid that holds them: a forked
    /// child drops its copy of the parent's (the parent writes them).
    length_queries: FxHashMap<u64, HeldLengthQueries>,
    inits: FxHashMap<u64, HeldInit>,
    held_pid: u32,
}

/// Where a session stands, for a record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionView {
    pub(crate) slot: Option<u64>,
    pub(crate) token: Option<Arc<TokenRef>>,
    pub(crate) login: Option<LoginState>,
}

impl CallContext {
    /// Forgets everything (the provider starts afresh), and gives back the held inits and
    /// length queries, which must go out on their own.
    #[must_use]
    pub(crate) fn clear(&mut self) -> Vec<Record> {
        let held = self.release_all_held();
        *self = CallContext::default();
        held
    }

    pub(crate) fn session_opened(&mut self, session: u64, slot: u64) {
        self.sessions.insert(
            session,
            SessionEntry {
                slot,
                ..Default::default()
            },
        );
        self.slots.entry(slot).or_insert(SlotEntry {
            token: None,
            login: LoginState::Public,
        });
    }

    /// A session closed. When it was the token's last session the token is logged out
    /// (PKCS#11 2.40 §5.6, C_CloseSession). Session objects die with it, so cached identities
    /// are dropped: their handles may be reused.
    pub(crate) fn session_closed(&mut self, session: u64) {
        if let Some(entry) = self.sessions.remove(&session) {
            if !self.sessions.values().any(|s| s.slot == entry.slot) {
                self.set_login(entry.slot, LoginState::Public);
            }
        }
        self.keys.clear();
    }

    pub(crate) fn all_sessions_closed(&mut self, slot: u64) {
        self.sessions.retain(|_, s| s.slot != slot);
        self.set_login(slot, LoginState::Public);
        self.keys.clear();
    }

    pub(crate) fn slot_of(&self, session: u64) -> Option<u64> {
        self.sessions.get(&session).map(|s| s.slot)
    }

    pub(crate) fn has_token(&self, slot: u64) -> bool {
        self.slots.get(&slot).is_some_and(|s| s.token.is_some())
    }

    pub(crate) fn set_token(&mut self, slot: u64, token: Option<Arc<TokenRef>>) {
        self.slots
            .entry(slot)
            .or_insert(SlotEntry {
                token: None,
                login: LoginState::Public,
            })
            .token = token;
    }

    pub(crate) fn set_login(&mut self, slot: u64, login: LoginState) {
        self.slots
            .entry(slot)
            .or_insert(SlotEntry {
                token: None,
                login: LoginState::Public,
            })
            .login = login;
        if login == LoginState::Public {
            // Private objects become invisible; their handles may be reused.
            self.keys.clear();
        }
    }

    pub(crate) fn session_view(&self, session: u64) -> SessionView {
        let Some(slot) = self.slot_of(session) else {
            return SessionView::default();
        };
        self.slot_view(slot)
    }

    pub(crate) fn slot_view(&self, slot: u64) -> SessionView {
        let entry = self.slots.get(&slot);
        SessionView {
            slot: Some(slot),
            token: entry.and_then(|e| e.token.clone()),
            login: entry.map(|e| e.login),
        }
    }

    /// Remembers the operation's mechanism and key for the session's later calls; false when
    /// the session is not one this context knows.
    pub(crate) fn start_op(&mut self, session: u64, op: Op, ctx: OpContext) -> bool {
        match self.sessions.get_mut(&session) {
            Some(s) => {
                s.ops[op.index()] = Some(ctx);
                true
            }
            None => false,
        }
    }

    pub(crate) fn op(&self, session: u64, op: Op) -> Option<&OpContext> {
        self.sessions
            .get(&session)
            .and_then(|s| s.ops[op.index()].as_ref())
    }

    pub(crate) fn end_op(&mut self, session: u64, op: Op) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.ops[op.index()] = None;
        }
    }

    pub(crate) fn cached_key(&self, handle: u64) -> Option<&Arc<ObjectIdentity>> {
        self.keys.get(&handle)
    }

    pub(crate) fn cache_key(&mut self, handle: u64, identity: Arc<ObjectIdentity>) {
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(handle, identity);
    }

    /// The object was destroyed or its attributes changed.
    pub(crate) fn forget_key(&mut self, handle: u64) {
        self.keys.remove(&handle);
    }

    /// Drops what a parent process held, in a forked child.
    fn forget_parents_held(&mut self) {
        let pid = crate::os::process::current_pid();
        if self.held_pid != pid {
            self.length_queries.clear();
            self.inits.clear();
            self.held_pid = pid;
        }
    }

    /// The held length queries of this process.
    fn held_length_queries(&mut self) -> &mut FxHashMap<u64, HeldLengthQueries> {
        self.forget_parents_held();
        &mut self.length_queries
    }

    /// The held inits of this process.
    fn held_inits(&mut self) -> &mut FxHashMap<u64, HeldInit> {
        self.forget_parents_held();
        &mut self.inits
    }

    /// Holds the outcome of a successful init of `op` in `session`. Returns an init still held
    /// there, which must now go out on its own (the caller releases it before the call; this
    /// only guards against losing one).
    pub(crate) fn hold_init(&mut self, session: u64, op: Op, outcome: Record) -> Option<Record> {
        self.held_inits()
            .insert(session, HeldInit { op, outcome })
            .map(|h| h.outcome)
    }

    /// The init held in `session` for `op`, which the caller's outcome tells.
    pub(crate) fn take_init(&mut self, session: u64, op: Op) -> Option<Record> {
        let inits = self.held_inits();
        match inits.get(&session) {
            Some(h) if h.op == op => inits.remove(&session).map(|h| h.outcome),
            _ => None,
        }
    }

    /// The init held in `session` unless the call about to be made continues its operation
    /// (`continues`): it gets no outcome of its operation to tell it.
    pub(crate) fn release_init_unless(
        &mut self,
        session: u64,
        continues: Option<Op>,
    ) -> Option<Record> {
        let inits = self.held_inits();
        match inits.get(&session) {
            Some(h) if Some(h.op) != continues => inits.remove(&session).map(|h| h.outcome),
            _ => None,
        }
    }

    /// Holds the outcome of a length query of `function` in `session`. Returns the outcomes
    /// that must now go out on their own: those held for another function, or all of them
    /// once too many wait.
    pub(crate) fn hold_length_query(
        &mut self,
        session: u64,
        function: &'static str,
        outcome: Record,
    ) -> Vec<Record> {
        let held = self.held_length_queries();
        let entry = held.entry(session).or_insert_with(|| HeldLengthQueries {
            function,
            // Room for one (the usual count): a Record is about 660 bytes, and Vec's first
            // growth to 4 of them would be a request that makes glibc's malloc consolidate its
            // free chunks, once per operation.
            outcomes: Vec::with_capacity(1),
        });
        let mut released = Vec::new();
        if entry.function != function {
            released = std::mem::take(&mut entry.outcomes);
            entry.function = function;
        }
        entry.outcomes.push(outcome);
        if entry.outcomes.len() > MAX_HELD_LENGTH_QUERIES {
            released.append(&mut entry.outcomes);
        }
        self.with_init_ahead(session, released)
    }

    /// The number of length queries of `function` held in `session`, which the caller's
    /// outcome counts: they are dropped.
    pub(crate) fn take_length_queries(&mut self, session: u64, function: &'static str) -> u64 {
        let held = self.held_length_queries();
        match held.get(&session) {
            Some(h) if h.function == function => {
                held.remove(&session).map_or(0, |h| h.outcomes.len() as u64)
            }
            _ => 0,
        }
    }

    /// The length queries held in `session` for a function other than `function`: they get
    /// no outcome of their own function to count them.
    pub(crate) fn release_length_queries_unless(
        &mut self,
        session: u64,
        function: &'static str,
    ) -> Vec<Record> {
        let held = self.held_length_queries();
        let released = match held.get(&session) {
            Some(h) if h.function != function => {
                held.remove(&session).map_or_else(Vec::new, |h| h.outcomes)
            }
            _ => Vec::new(),
        };
        self.with_init_ahead(session, released)
    }

    /// Length queries of `session` that go out on their own take the session's held init
    /// with them, ahead: it was made before them, and a later outcome telling it would put it
    /// after them in the log.
    fn with_init_ahead(&mut self, session: u64, mut queries: Vec<Record>) -> Vec<Record> {
        if !queries.is_empty() {
            if let Some(init) = self.release_init_unless(session, None) {
                queries.insert(0, init);
            }
        }
        queries
    }

    /// What is held for `session`, in the order it was made: a new session with the handle of
    /// one this context did not see close must not tell or count it.
    pub(crate) fn release_session_held(&mut self, session: u64) -> Vec<Record> {
        let mut held: Vec<Record> = self
            .held_inits()
            .remove(&session)
            .map(|h| h.outcome)
            .into_iter()
            .collect();
        if let Some(queries) = self.held_length_queries().remove(&session) {
            held.extend(queries.outcomes);
        }
        held
    }

    /// Every held init and length query, in the order they were made (C_Finalize,
    /// C_CloseAllSessions, exit).
    pub(crate) fn release_all_held(&mut self) -> Vec<Record> {
        // An init comes before the length queries of its operation, also within one µs.
        let mut all: Vec<Record> = self.held_inits().drain().map(|(_, h)| h.outcome).collect();
        all.extend(
            self.held_length_queries()
                .drain()
                .flat_map(|(_, h)| h.outcomes),
        );
        // Timestamps of one process's records, taken as they were made.
        all.sort_by(|a, b| a.ts.as_str().cmp(b.ts.as_str()));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_session_close_logs_token_out_and_clears_keys() {
        let mut c = CallContext::default();
        c.session_opened(1, 7);
        c.session_opened(2, 7);
        c.set_login(7, LoginState::User);
        c.cache_key(9, Arc::new(ObjectIdentity::handle_only(9)));
        c.session_closed(1);
        assert_eq!(c.session_view(2).login, Some(LoginState::User));
        assert!(c.cached_key(9).is_none());
        c.session_closed(2);
        assert_eq!(c.slot_view(7).login, Some(LoginState::Public));
        assert_eq!(c.session_view(2), SessionView::default());
    }

    fn length_query(function: &'static str) -> Record {
        let who = crate::writer::testing::who();
        Record::new(
            &who,
            1,
            crate::format::record::Event::Outcome,
            Some(function),
        )
    }

    #[test]
    fn length_queries_are_counted_by_their_function_or_released() {
        let mut c = CallContext::default();
        assert!(c
            .hold_length_query(1, "C_Sign", length_query("C_Sign"))
            .is_empty());
        assert!(c
            .hold_length_query(1, "C_Sign", length_query("C_Sign"))
            .is_empty());
        assert!(c
            .hold_length_query(2, "C_Encrypt", length_query("C_Encrypt"))
            .is_empty());
        // Another session's call, or the same function, releases nothing.
        assert!(c.release_length_queries_unless(1, "C_Sign").is_empty());
        assert_eq!(c.take_length_queries(2, "C_Sign"), 0);
        // The next C_Sign outcome in session 1 counts both.
        assert_eq!(c.take_length_queries(1, "C_Sign"), 2);
        assert_eq!(c.take_length_queries(1, "C_Sign"), 0);
        // Another function in session 2: its length query goes out on its own.
        let released = c.release_length_queries_unless(2, "C_CloseSession");
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].function, Some("C_Encrypt"));
        assert!(c.release_all_held().is_empty());
    }

    #[test]
    fn an_init_is_told_by_its_operation_or_released_before_the_rest() {
        let mut c = CallContext::default();
        assert!(c
            .hold_init(1, Op::Sign, length_query("C_SignInit"))
            .is_none());
        // A call that continues the operation keeps it held; another operation takes nothing.
        assert!(c.release_init_unless(1, Some(Op::Sign)).is_none());
        assert!(c.take_init(1, Op::Verify).is_none());
        assert!(c.take_init(2, Op::Sign).is_none());
        let told = c.take_init(1, Op::Sign).expect("held for its operation");
        assert_eq!(told.function, Some("C_SignInit"));
        assert!(c.take_init(1, Op::Sign).is_none(), "told once");
        // Any other call in the session lets it go.
        c.hold_init(1, Op::Find, length_query("C_FindObjectsInit"));
        assert!(c.release_init_unless(2, None).is_none());
        let released = c.release_init_unless(1, None).expect("released");
        assert_eq!(released.function, Some("C_FindObjectsInit"));
        // Length queries let go take the session's init with them, ahead.
        c.hold_init(2, Op::Sign, length_query("C_SignInit"));
        c.hold_length_query(2, "C_Sign", length_query("C_Sign"));
        let released = c.release_length_queries_unless(2, "C_GetSessionInfo");
        let functions: Vec<_> = released.iter().map(|r| r.function).collect();
        assert_eq!(functions, [Some("C_SignInit"), Some("C_Sign")]);
        assert!(c.take_init(2, Op::Sign).is_none(), "let go with them");
        // At the end, an init goes out before the length queries held after it.
        c.hold_init(3, Op::Digest, length_query("C_DigestInit"));
        c.hold_length_query(3, "C_Digest", length_query("C_Digest"));
        let all = c.release_all_held();
        let functions: Vec<_> = all.iter().map(|r| r.function).collect();
        assert_eq!(functions, [Some("C_DigestInit"), Some("C_Digest")]);
        assert!(c.release_all_held().is_empty());
    }

    #[test]
    fn held_length_queries_are_bounded_and_released_at_the_end() {
        let mut c = CallContext::default();
        let mut released = 0;
        for _ in 0..=MAX_HELD_LENGTH_QUERIES {
            released += c
                .hold_length_query(1, "C_Digest", length_query("C_Digest"))
                .len();
        }
        assert_eq!(
            released,
            MAX_HELD_LENGTH_QUERIES + 1,
            "all go out once too many wait"
        );
        c.hold_length_query(1, "C_Digest", length_query("C_Digest"));
        // A length query of another function in the session lets the held one go.
        let other = c.hold_length_query(1, "C_Sign", length_query("C_Sign"));
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].function, Some("C_Digest"));
        c.hold_length_query(3, "C_Encrypt", length_query("C_Encrypt"));
        let all = c.release_all_held();
        assert_eq!(all.len(), 2);
        assert!(c.release_all_held().is_empty());
    }

    #[test]
    fn ops_are_per_session_and_kind_and_cache_is_bounded() {
        let mut c = CallContext::default();
        c.session_opened(1, 0);
        c.start_op(
            1,
            Op::Sign,
            OpContext {
                mechanism: None,
                key: Some(Arc::new(ObjectIdentity::handle_only(3))),
            },
        );
        assert!(c.op(1, Op::Verify).is_none());
        assert_eq!(
            c.op(1, Op::Sign).unwrap().key.as_ref().unwrap().handle,
            Some(3)
        );
        c.end_op(1, Op::Sign);
        assert!(c.op(1, Op::Sign).is_none());
        for h in 0..(MAX_CACHED_KEYS as u64 * 2) {
            c.cache_key(h, Arc::new(ObjectIdentity::handle_only(h)));
        }
        assert!(c.keys.len() <= MAX_CACHED_KEYS);
    }
}
