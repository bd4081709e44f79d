//! One audited call: what it records before and after, and the write-ahead / fail-closed flow.

use super::detail::token_ref;
use super::error::guard;
use super::error::ShimError;
use super::{args, Runtime};
use crate::format::names::rv_name;
use crate::format::record::{Detail, Event, FoldedInit, Named, OutputDisposition, Record};
use crate::shim::context::{Op, OpContext};
use crate::writer::auditor::FailurePolicy;
use cryptoki_sys as ck;
use std::sync::Arc;
use std::time::Instant;

/// At most this many handles of one C_FindObjects are written.
pub(super) const MAX_LOGGED_HANDLES: usize = 64;

/// How a function is audited (docs/FORMAT.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Reads module, slot, token, mechanism or session information: one outcome that may wait.
    Informational,
    /// Changes state or starts something: the intent is in the file before the call is forwarded.
    Acting,
    /// Acting, and also hands out key material: the outcome is written before output is returned.
    ActingResult,
    /// Starts an operation (an *Init): no intent; when it succeeds, the operation's first
    /// outcome tells it, else its outcome waits for the next write. It hands nothing out and
    /// leaves nothing behind but session state, and the result's outcome names the key and
    /// mechanism again.
    Prepare,
    /// Hands something back: the outcome is in the file before the output reaches the caller.
    Result,
    /// Gives something up: goes ahead even when the log fails (the loss is counted).
    GivingUp,
}

impl Kind {
    fn writes_intent(self) -> bool {
        matches!(self, Kind::Acting | Kind::ActingResult)
    }
}

pub(crate) fn rv_named(rv: ck::CK_RV) -> Named {
    Named::new(rv_name(rv as u64), rv as u64)
}

/// A record with identity and no detail.
pub(crate) fn bare_record(rt: &Runtime, ev: Event, function: Option<&'static str>) -> Record {
    Record::new(&rt.who(), crate::os::process::current_tid(), ev, function)
}

/// An outcome record of `function` returning `rv`, timed from `started`.
pub(crate) fn timed_outcome(
    rt: &Runtime,
    function: &'static str,
    rv: ck::CK_RV,
    started: Instant,
) -> Record {
    let mut outcome = bare_record(rt, Event::Outcome, Some(function));
    outcome.detail.rv = Some(rv_named(rv));
    outcome.detail.dur_us = Some(started.elapsed().as_micros() as u64);
    outcome
}

/// Writes an intent that must be in the file before its call is forwarded: its seq, None when
/// it could not be written but fail-open lets the call go ahead, Err when the call must be
/// refused (fail-closed).
pub(crate) fn write_intent_or_refuse(
    rt: &Runtime,
    intent: &Record,
) -> Result<Option<u64>, ShimError> {
    match rt.auditor.write(intent) {
        Ok(seq) => Ok(Some(seq)),
        Err(_) if rt.auditor.policy() == FailurePolicy::Open => Ok(None),
        Err(_) => Err(ShimError::NotRecorded),
    }
}

/// How an outcome waits in its session (`Call::waits_in_session`).
#[derive(Clone, Copy)]
enum HeldAs {
    /// A successful init of the operation, until the operation's first outcome tells it.
    Init(Op),
    /// A length query, until the next outcome of its function counts it.
    LengthQuery,
}

/// The call being audited.
pub(crate) struct Call<'rt> {
    pub(crate) rt: &'rt Runtime,
    /// The provider's table this call goes through (`Provider::table`): the one of the same
    /// kind as the table the application called through.
    pub(super) provider_table: &'rt ck::CK_FUNCTION_LIST_3_2,
    pub(crate) function: &'static str,
    pub(crate) kind: Kind,
    pub(crate) detail: Detail,
    pub(super) session: Option<u64>,
    /// Operation started by this call (an *Init), remembered if it succeeds.
    pub(super) starts: Option<Op>,
    /// Operation this call continues (`Call::within`).
    pub(super) within: Option<Op>,
    /// Output regions to wipe if the outcome must be written and cannot be.
    pub(super) outputs: Vec<(*mut u8, usize)>,
    /// The application's output buffer and its size, as it passed them (before the call; no
    /// function has two). What the provider reports having written is read and wiped only
    /// within it: a provider that reports more (against PKCS#11) must not make p11audit read or
    /// zero memory past the application's buffer.
    pub(super) output_capacity: Option<(*mut u8, usize)>,
    /// C_GetAttributeValue: each attribute's buffer and its `ulValueLen` as the application
    /// passed them.
    pub(super) attribute_buffers: Vec<(*mut u8, ck::CK_ULONG)>,
    /// The outcome hands something to the application, so it must be in the file first.
    pub(super) hands_out: bool,
    /// The call opened, closed or logged in or out of a session, or reinitialized a token: the
    /// session's slot, token and login state are read again for its outcome. Any other call
    /// leaves them as they were read before it (`Call::session`).
    pub(super) changes_session_view: bool,
}

impl<'rt> Call<'rt> {
    pub(crate) fn new(rt: &'rt Runtime, function: &'static str, kind: Kind, for_2x: bool) -> Self {
        Call {
            rt,
            provider_table: rt.provider.table(for_2x),
            function,
            kind,
            detail: Detail::default(),
            session: None,
            starts: None,
            within: None,
            outputs: Vec::new(),
            output_capacity: None,
            attribute_buffers: Vec::new(),
            hands_out: false,
            changes_session_view: false,
        }
    }

    /// A record of this call with the detail gathered so far, which it takes (no copy: it is
    /// built twice per call). `write_intent` puts it back.
    pub(super) fn take_record(&mut self, ev: Event) -> Record {
        let mut r = bare_record(self.rt, ev, Some(self.function));
        r.detail = std::mem::take(&mut self.detail);
        r
    }

    // ---- context -------------------------------------------------------------------------

    /// C_GetTokenInfo returned `info` to the application: its record names the token, and the
    /// cache is refreshed from it (no extra provider call).
    ///
    /// # Safety
    /// `info` must be NULL or a CK_TOKEN_INFO the provider just filled.
    pub(crate) unsafe fn token_info_returned(
        &mut self,
        slot: ck::CK_SLOT_ID,
        info: *const ck::CK_TOKEN_INFO,
        rv: ck::CK_RV,
    ) {
        if rv != ck::CKR_OK {
            return;
        }
        // SAFETY: per the caller.
        if let Some(info) = unsafe { args::read(info) } {
            let token = Arc::new(token_ref(&info));
            self.detail.token = Some(token.clone());
            self.rt.context.lock().set_token(slot as u64, Some(token));
        }
    }

    /// # Safety
    /// See `args::mechanism`.
    pub(crate) unsafe fn mechanism(&mut self, p: *const ck::CK_MECHANISM) {
        // SAFETY: per the caller.
        self.detail.mechanism = unsafe { args::mechanism(p) }.map(Arc::new);
    }

    /// # Safety
    /// See `args::template`.
    pub(crate) unsafe fn template(&mut self, p: *const ck::CK_ATTRIBUTE, count: ck::CK_ULONG) {
        // SAFETY: per the caller.
        self.detail.template = Some(unsafe { args::template(p, count, true, |_| None) });
    }

    /// # Safety
    /// See `args::template`.
    pub(crate) unsafe fn template2(&mut self, p: *const ck::CK_ATTRIBUTE, count: ck::CK_ULONG) {
        // SAFETY: per the caller.
        self.detail.template2 = Some(unsafe { args::template(p, count, true, |_| None) });
    }

    // ---- operations ----------------------------------------------------------------------

    /// Before C_GetAttributeValue: the size of each attribute's buffer.
    ///
    /// # Safety
    /// `template` must be NULL or point to `count` readable attributes.
    pub(crate) unsafe fn attribute_buffers(
        &mut self,
        template: *const ck::CK_ATTRIBUTE,
        count: ck::CK_ULONG,
    ) {
        if template.is_null() {
            return;
        }
        for i in 0..count as usize {
            // SAFETY: i < count.
            let Some(a) = (unsafe { args::read(template.add(i)) }) else {
                break;
            };
            self.attribute_buffers.push((a.pValue.cast(), a.ulValueLen));
        }
    }

    /// An object the call created with the call's template: its handle and identity (what
    /// the template does not name read from the provider; cached, so later use of the key
    /// costs no extra call).
    ///
    /// # Safety
    /// `p` must be NULL or readable.
    pub(crate) unsafe fn created(&mut self, p: *const ck::CK_OBJECT_HANDLE, rv: ck::CK_RV) {
        // SAFETY: per the caller.
        unsafe { self.created_with(p, rv, false) }
    }

    /// As `created`, for the private key of C_GenerateKeyPair, made with `template2`.
    ///
    /// # Safety
    /// `p` must be NULL or readable.
    pub(crate) unsafe fn created_private(&mut self, p: *const ck::CK_OBJECT_HANDLE, rv: ck::CK_RV) {
        // SAFETY: per the caller.
        unsafe { self.created_with(p, rv, true) }
    }

    /// # Safety
    /// `p` must be NULL or readable.
    unsafe fn created_with(
        &mut self,
        p: *const ck::CK_OBJECT_HANDLE,
        rv: ck::CK_RV,
        template2: bool,
    ) {
        if rv != ck::CKR_OK {
            return;
        }
        // SAFETY: per the caller.
        if let Some(h) = unsafe { args::read(p) } {
            let template = if template2 {
                &self.detail.template2
            } else {
                &self.detail.template
            };
            let identity = self.identity_of_new(h, template.as_deref());
            self.detail.created.push(identity);
        }
    }

    /// C_OpenSession returned: remember the session's slot.
    ///
    /// # Safety
    /// `session` must be NULL or readable.
    pub(crate) unsafe fn session_opened(
        &mut self,
        slot: ck::CK_SLOT_ID,
        session: *const ck::CK_SESSION_HANDLE,
        rv: ck::CK_RV,
    ) {
        if rv != ck::CKR_OK {
            return;
        }
        // SAFETY: per the caller.
        if let Some(h) = unsafe { args::read(session) } {
            let stale = {
                let mut context = self.rt.context.lock();
                context.session_opened(h as u64, slot as u64);
                context.release_session_held(h as u64)
            };
            self.rt.auditor.wait_each(stale);
            self.changes_session_view = true;
            self.session = Some(h as u64);
            self.detail.session = Some(h as u64);
        }
    }

    // ---- the flow ------------------------------------------------------------------------

    /// Writes the intent of an acting call. Err: do not forward.
    pub(super) fn write_intent(&mut self) -> Result<Option<u64>, ShimError> {
        if !self.kind.writes_intent() {
            return Ok(None);
        }
        let mut intent = self.take_record(Event::Intent);
        // An empty template is left out of the intent (and still given to the outcome should
        // the intent not be written).
        let empty_template = intent.detail.template.take_if(|t| t.is_empty());
        let written = write_intent_or_refuse(self.rt, &intent);
        self.detail = intent.detail;
        if empty_template.is_some() {
            self.detail.template = empty_template;
        }
        written
    }

    /// Where the outcome waits instead of being written, if it does. The outcome of an init
    /// that started its operation (`op_started`) waits in its session for the first outcome of
    /// that operation, which tells it (`init`). A length query's outcome (NULL output buffer)
    /// waits in the session for the next outcome of the same function, which counts it
    /// (`len_queries`). Calls with an intent keep their own outcome: the intent must be
    /// answered.
    fn waits_in_session(&self, outcome: &Record, op_started: bool) -> Option<(u64, HeldAs)> {
        let session = self.session?;
        if outcome.detail.intent.is_some() {
            return None;
        }
        match (self.kind, self.starts) {
            (Kind::Prepare, Some(op)) if op_started => Some((session, HeldAs::Init(op))),
            (Kind::Result, _) if outcome.detail.out == Some(OutputDisposition::LengthQuery) => {
                Some((session, HeldAs::LengthQuery))
            }
            _ => None,
        }
    }

    /// Keeps `outcome` in its session (`waits_in_session`); what must go out on its own
    /// instead is queued.
    fn hold(&self, session: u64, held_as: HeldAs, outcome: Record) {
        let released = {
            let mut context = self.rt.context.lock();
            match held_as {
                HeldAs::Init(op) => context
                    .hold_init(session, op, outcome)
                    .into_iter()
                    .collect(),
                HeldAs::LengthQuery => context.hold_length_query(session, self.function, outcome),
            }
        };
        self.rt.auditor.wait_each(released);
    }

    /// An outcome of a result call counts the length queries its session holds for its
    /// function.
    fn count_length_queries(&self, outcome: &mut Record) {
        let Some(session) = self.session else {
            return;
        };
        if self.kind != Kind::Result || outcome.detail.intent.is_some() {
            return;
        }
        let counted = self
            .rt
            .context
            .lock()
            .take_length_queries(session, self.function);
        if counted > 0 {
            outcome.detail.len_queries = Some(counted);
        }
    }

    /// The first outcome of an operation, with no intent before it, tells the init held for
    /// the operation in its session, if any: only when the outcome names the slot, login,
    /// mechanism and key the init's record would have (the same `Arc`s, which the operation
    /// keeps), so that telling it loses nothing. Otherwise the init goes out on its own, ahead.
    fn tell_init(&self, outcome: &mut Record) {
        let (Some(op), Some(session), None) = (self.within, self.session, outcome.detail.intent)
        else {
            return;
        };
        let Some(init) = self.rt.context.lock().take_init(session, op) else {
            return;
        };
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        let (mine, its) = (&outcome.detail, &init.detail);
        let told_whole = same(&mine.mechanism, &its.mechanism)
            && same(&mine.key, &its.key)
            && mine.slot == its.slot
            && mine.login == its.login;
        if !told_whole {
            self.rt.auditor.wait(&init);
            return;
        }
        let mut detail = init.detail;
        outcome.detail.init = Some(Box::new(FoldedInit {
            function: init.function.unwrap_or_default(),
            ts: init.ts,
            tid: (init.tid != outcome.tid).then_some(init.tid),
            dur_us: detail.dur_us.unwrap_or_default(),
            template: detail.template.take(),
            sig_len: detail.sig_len,
        }));
    }

    /// Before the call: what its session holds that this call's outcome will not tell goes out
    /// on its own, ahead of this call's records: length queries of another function, and an
    /// init unless this call continues its operation with no intent of its own (an intent
    /// goes to the file before the call, so an init told after it would be out of order). A
    /// call on no session that may end sessions (C_CloseAllSessions) lets everything go.
    pub(super) fn release_held_for_others(&self) {
        let released = match self.session {
            Some(session) => {
                let continues = self.within.filter(|_| !self.kind.writes_intent());
                let mut context = self.rt.context.lock();
                let init = context.release_init_unless(session, continues);
                let queries = context.release_length_queries_unless(session, self.function);
                drop(context);
                if let Some(init) = init {
                    self.rt.auditor.wait(&init);
                }
                queries
            }
            None if self.kind == Kind::GivingUp => self.rt.context.lock().release_all_held(),
            None => return,
        };
        self.rt.auditor.wait_each(released);
    }

    /// Writes (or queues) the outcome and decides what the caller gets.
    pub(super) fn finish(
        &mut self,
        rv: ck::CK_RV,
        started: Instant,
        intent: Option<u64>,
    ) -> ck::CK_RV {
        let mut op_started = false;
        if rv == ck::CKR_OK {
            if let (Some(op), Some(session)) = (self.starts, self.session) {
                let ctx = OpContext {
                    mechanism: self.detail.mechanism.clone(),
                    key: self.detail.key.clone(),
                };
                op_started = self.rt.context.lock().start_op(session, op, ctx);
            }
        }
        if self.changes_session_view {
            self.refresh_session_view();
        }
        let mut outcome = self.take_record(Event::Outcome);
        outcome.detail.rv = Some(rv_named(rv));
        outcome.detail.dur_us = Some(started.elapsed().as_micros() as u64);
        outcome.detail.intent = intent;
        if intent.is_some() {
            // The intent already carries the templates.
            outcome.detail.template = None;
            outcome.detail.template2 = None;
        }
        if let Some((session, held_as)) = self.waits_in_session(&outcome, op_started) {
            self.hold(session, held_as, outcome);
            return rv;
        }
        self.count_length_queries(&mut outcome);
        self.tell_init(&mut outcome);
        let must_write = self.hands_out && matches!(self.kind, Kind::Result | Kind::ActingResult);
        if !must_write {
            self.rt.auditor.wait(&outcome);
            return rv;
        }
        match self.rt.auditor.write(&outcome) {
            Ok(_) => rv,
            Err(_) if self.rt.auditor.policy() == FailurePolicy::Open => rv,
            Err(_) => {
                self.wipe_outputs();
                ShimError::NotRecorded.rv()
            }
        }
    }
}

/// The audited flow every forwarded function runs through. `for_2x`: the application called
/// through p11audit's 2.40 table (`Provider::table`).
pub(crate) fn run_call(
    function: &'static str,
    kind: Kind,
    for_2x: bool,
    before: impl FnOnce(&mut Call),
    forward: impl FnOnce(&ck::CK_FUNCTION_LIST_3_2) -> ck::CK_RV,
    after: impl FnOnce(&mut Call, ck::CK_RV),
) -> ck::CK_RV {
    guard(|| {
        let Some(rt) = super::runtime() else {
            // Not configured: nothing can be forwarded.
            return ShimError::NotInitialized.rv();
        };
        let mut call = Call::new(rt, function, kind, for_2x);
        before(&mut call);
        call.release_held_for_others();
        let intent = match call.write_intent() {
            Ok(seq) => seq,
            Err(e) => return e.rv(),
        };
        let started = Instant::now();
        let rv = forward(call.provider_table);
        // From here the provider's output is in the application's buffers. Should p11audit
        // fail (panic) before its record is settled, that output must not stay there
        // unrecorded: it is wiped, and the call fails.
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            after(&mut call, rv);
            call.finish(rv, started, intent)
        }));
        finished.unwrap_or_else(|_| {
            call.wipe_given_buffers();
            record_internal_failure(rt, function, rv, started, intent, call.session);
            ShimError::Panicked.rv()
        })
    })
}

/// The provider answered `rv`, but p11audit failed (panicked) before it settled the call's
/// record: the output has been wiped and the application gets CKR_GENERAL_ERROR. The call still
/// took effect in the provider (an operation ended, an object may exist), so it gets an outcome
/// record built from the plain values that are known for sure: the provider's `rv`, the intent
/// it answers, the session, and `"out":"withheld"`. It may wait for the next write: nothing
/// reaches the application. Should even that fail, the record is counted as lost and reported
/// in the next gap record (docs/FORMAT.md §7).
fn record_internal_failure(
    rt: &Runtime,
    function: &'static str,
    rv: ck::CK_RV,
    started: Instant,
    intent: Option<u64>,
    session: Option<u64>,
) {
    let recorded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // An init held for the session goes first, on its own: this record tells nothing.
        let held = session.and_then(|s| rt.context.lock().release_init_unless(s, None));
        if let Some(init) = held {
            rt.auditor.wait(&init);
        }
        let mut outcome = timed_outcome(rt, function, rv, started);
        outcome.detail.intent = intent;
        outcome.detail.session = session;
        outcome.detail.out = Some(OutputDisposition::Withheld);
        outcome.detail.note = Some(INTERNAL_FAILURE_NOTE.into());
        rt.auditor.wait(&outcome);
    }));
    if recorded.is_err() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.auditor.count_lost(1);
        }));
    }
}

/// The note of an outcome that p11audit failed to settle (`record_internal_failure`).
pub(crate) const INTERNAL_FAILURE_NOTE: &str =
    "p11audit failed after the provider answered: output withheld, CKR_GENERAL_ERROR returned";

/// Argument edge cases no real provider produces: a provider that reports more output than the
/// application's buffer holds (against PKCS#11). The provider's side is played by writing the
/// lengths it would report straight into the arguments; no provider is called.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::AttributeValue;
    use crate::format::record::Bytes;
    use crate::os::lock::Mutex;
    use crate::shim::context::CallContext;
    use crate::shim::provider::Provider;
    use crate::writer::auditor::Auditor;
    use crate::writer::testing::{log_settings, who};

    fn runtime(dir: &std::path::Path) -> Runtime {
        let settings = log_settings(dir, [0x44; 32]);
        let provider = Box::leak(Box::new(Provider {
            path: "unused".into(),
            // SAFETY: a table of `Option<fn>`s and a version: all zeros is a valid (empty) one.
            functions: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            functions_2x: unsafe { std::mem::zeroed() },
            interfaces: Vec::new(),
        }));
        Runtime {
            provider,
            auditor: Auditor::open(&settings, &who(), FailurePolicy::Closed).unwrap(),
            host: "h".into(),
            exe: "/x".into(),
            uid: 0,
            login: Default::default(),
            peer: None,
            context: Mutex::new(CallContext::default()),
            attached_pid: Default::default(),
        }
    }

    fn label(value: &mut [u8], len: usize) -> ck::CK_ATTRIBUTE {
        ck::CK_ATTRIBUTE {
            type_: ck::CKA_LABEL,
            pValue: value.as_mut_ptr().cast(),
            ulValueLen: len as ck::CK_ULONG,
        }
    }

    #[test]
    fn attribute_values_longer_than_their_buffer_are_not_read_nor_wiped_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        // One allocation: the application's 8-byte label buffer, then 8 bytes that are not it.
        let mut memory = *b"labelXYZsecret!!";
        let buffer = memory.as_mut_ptr();
        for (reported, logged, wiped) in [(5, Some("label"), 5), (16, None, 8)] {
            let mut template = [label(&mut memory[..8], 8)];
            let mut c = Call::new(&rt, "C_GetAttributeValue", Kind::Result, false);
            // SAFETY: a live one-attribute template.
            unsafe { c.attribute_buffers(template.as_ptr(), 1) };
            // The provider's answer: CKR_OK and `reported` bytes.
            template[0].ulValueLen = reported;
            // SAFETY: as above; `reported` bytes are readable only when within the buffer,
            // which is what is being tested.
            unsafe { c.attributes_read(template.as_ptr(), 1, ck::CKR_OK) };
            let summary = &c.detail.template.as_ref().unwrap()[0];
            assert_eq!(summary.len, reported as i64);
            let value = summary.value.as_ref().map(|v| match v {
                AttributeValue::Bytes(Bytes::Text(t)) => t.clone(),
                other => panic!("{other:?}"),
            });
            assert_eq!(value.as_deref(), logged);
            assert_eq!(c.outputs, vec![(buffer, wiped)]);
        }
    }

    #[test]
    fn output_reported_longer_than_the_buffer_is_wiped_only_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let mut out = [0u8; 32];
        let mut len: ck::CK_ULONG = 16;
        let mut c = Call::new(&rt, "C_Sign", Kind::Result, false);
        // SAFETY: `len` is a live CK_ULONG.
        unsafe { c.output_buffer(out.as_mut_ptr(), &len) };
        len = 32;
        // SAFETY: as above.
        unsafe { c.output(out.as_mut_ptr(), &len, ck::CKR_OK) };
        assert_eq!(
            c.detail.out_len,
            Some(32),
            "the record says what the provider said"
        );
        assert_eq!(c.outputs, vec![(out.as_mut_ptr(), 16)]);
    }

    #[test]
    fn more_objects_found_than_asked_for_are_read_only_up_to_max() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let mut objects: [ck::CK_OBJECT_HANDLE; 3] = [7, 8, 9];
        let found: ck::CK_ULONG = 1_000;
        let mut c = Call::new(&rt, "C_FindObjects", Kind::Result, false);
        // SAFETY: `objects` holds 2 handles as far as the call knows (max), `found` is live.
        unsafe { c.objects_found(objects.as_mut_ptr(), 2, &found, ck::CKR_OK) };
        assert_eq!(c.detail.count, Some(1_000));
        assert_eq!(c.detail.found, vec![7, 8]);
        assert_eq!(c.outputs, vec![(objects.as_mut_ptr().cast::<u8>(), 16)]);
    }

    /// A failure inside p11audit (here a panic in the after-block) once the provider has
    /// written its output: the output must not reach the application unrecorded.
    #[test]
    fn output_is_wiped_when_p11audit_fails_after_the_provider_answered() {
        let dir = tempfile::tempdir().unwrap();
        // run_call looks the runtime up; this is the only unit test that sets it.
        assert!(crate::shim::RUNTIME.set(runtime(dir.path())).is_ok());
        let mut out = [0u8; 16];
        let mut len = out.len() as ck::CK_ULONG;
        let (out_ptr, len_ptr) = (out.as_mut_ptr(), &mut len as *mut ck::CK_ULONG);
        let rv = run_call(
            "C_Sign",
            Kind::Result,
            false,
            // SAFETY: `len` is a live CK_ULONG.
            |c| unsafe { c.output_buffer(out_ptr, len_ptr) },
            // The provider's answer: 16 bytes of output.
            |_| {
                // SAFETY: `out` has 16 bytes; `len` is live.
                unsafe {
                    std::ptr::write_bytes(out_ptr, 0x5a, 16);
                    *len_ptr = 16;
                }
                ck::CKR_OK
            },
            |_, _| panic!("a failure inside p11audit after the provider answered"),
        );
        assert_eq!(rv, ck::CKR_GENERAL_ERROR);
        assert_eq!(out, [0u8; 16]);
        // The call took effect in the provider: its outcome is in the log, saying what the
        // provider answered and that the output was withheld.
        let rt = crate::shim::runtime().unwrap();
        rt.auditor
            .flush(&bare_record(rt, Event::Outcome, None))
            .unwrap();
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(last["ev"], "outcome", "{last}");
        assert_eq!(last["fn"], "C_Sign", "{last}");
        assert_eq!(last["rv"], "CKR_OK", "{last}");
        assert_eq!(last["out"], "withheld", "{last}");
        assert_eq!(last["note"], INTERNAL_FAILURE_NOTE, "{last}");
    }
}
