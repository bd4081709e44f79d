//! One audited call: what it records before and after, and the write-ahead / fail-closed flow.

use super::error::ShimError;
use super::{args, thread_id, Runtime};
use crate::format::names::{rv_name, user_type_name};
use crate::format::record::{
    Bytes, Detail, Event, Named, ObjectIdentity, OutputDisposition, Record, TokenRef,
};
use crate::shim::context::{LoginState, Op, OpContext};
use crate::writer::auditor::FailurePolicy;
use cryptoki_sys as ck;
use std::sync::Arc;
use std::time::Instant;

/// At most this many handles of one C_FindObjects are written.
const MAX_LOGGED_HANDLES: usize = 64;

/// How a function is audited (docs/FORMAT.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Reads module, slot, token, mechanism or session information: one outcome that may wait.
    Informational,
    /// Changes state or starts something: the intent is in the file before the call is forwarded.
    Acting,
    /// Acting, and also hands out key material: the outcome is written before output is returned.
    ActingResult,
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
    Record::new(&rt.who(), thread_id(), ev, function)
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

/// A token's label and serial, blank padding trimmed.
fn token_ref(info: &ck::CK_TOKEN_INFO) -> TokenRef {
    TokenRef {
        label: Bytes::from_slice(args::trim_padded(&info.label)),
        serial: Bytes::from_slice(args::trim_padded(&info.serialNumber)),
    }
}

/// The call being audited.
pub(crate) struct Call<'rt> {
    pub(crate) rt: &'rt Runtime,
    /// The provider's table this call goes through (`Provider::table`): the one of the same
    /// kind as the table the application called through.
    provider_table: &'rt ck::CK_FUNCTION_LIST_3_2,
    pub(crate) function: &'static str,
    pub(crate) kind: Kind,
    pub(crate) detail: Detail,
    session: Option<u64>,
    /// Operation started by this call (an *Init), remembered if it succeeds.
    starts: Option<Op>,
    /// Output regions to wipe if the outcome must be written and cannot be.
    outputs: Vec<(*mut u8, usize)>,
    /// The application's output buffer and its size, as it passed them (before the call; no
    /// function has two). What the provider reports having written is read and wiped only
    /// within it: a provider that reports more (against PKCS#11) must not make p11audit read or
    /// zero memory past the application's buffer.
    output_capacity: Option<(*mut u8, usize)>,
    /// C_GetAttributeValue: each attribute's buffer and its `ulValueLen` as the application
    /// passed them.
    attribute_buffers: Vec<(*mut u8, ck::CK_ULONG)>,
    /// The outcome hands something to the application, so it must be in the file first.
    hands_out: bool,
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
            outputs: Vec::new(),
            output_capacity: None,
            attribute_buffers: Vec::new(),
            hands_out: false,
        }
    }

    /// A record of this call with the detail gathered so far, which it takes (no copy: it is
    /// built twice per call). `write_intent` puts it back.
    fn take_record(&mut self, ev: Event) -> Record {
        let mut r = bare_record(self.rt, ev, Some(self.function));
        r.detail = std::mem::take(&mut self.detail);
        r
    }

    // ---- context -------------------------------------------------------------------------

    /// The call acts on `session`: records the session, its slot, token and login state.
    pub(crate) fn session(&mut self, session: ck::CK_SESSION_HANDLE) {
        let session = session as u64;
        self.session = Some(session);
        self.detail.session = Some(session);
        self.refresh_session_view();
    }

    fn refresh_session_view(&mut self) {
        let Some(session) = self.session else { return };
        let view = {
            let ctx = self.rt.context.lock();
            match (ctx.slot_of(session), self.detail.slot) {
                (Some(_), _) => ctx.session_view(session),
                // The call closed the session: describe its token as it is now.
                (None, Some(slot)) => ctx.slot_view(slot),
                (None, None) => return,
            }
        };
        self.detail.slot = view.slot;
        self.detail.token = view.token;
        self.detail.login = view.login.map(LoginState::as_str);
    }

    /// The call concerns `slot` (fetches the token's label and serial once per slot).
    pub(crate) fn slot(&mut self, slot: ck::CK_SLOT_ID) {
        self.detail.slot = Some(slot as u64);
        self.ensure_token(slot);
        let view = self.rt.context.lock().slot_view(slot as u64);
        self.detail.token = view.token;
    }

    fn ensure_token(&self, slot: ck::CK_SLOT_ID) {
        if self.rt.context.lock().has_token(slot as u64) {
            return;
        }
        let Some(get) = self.provider_table.C_GetTokenInfo else {
            return;
        };
        // SAFETY: CK_TOKEN_INFO is plain data; all-zero is valid.
        let mut info: ck::CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out-pointer to a CK_TOKEN_INFO. No audit lock is held.
        if unsafe { get(slot, &mut info) } != ck::CKR_OK {
            return;
        }
        self.rt
            .context
            .lock()
            .set_token(slot as u64, Some(Arc::new(token_ref(&info))));
    }

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

    pub(crate) fn user_type(&mut self, user: ck::CK_USER_TYPE) {
        self.detail.user_type = Some(Named::new(user_type_name(user as u64), user as u64));
    }

    /// # Safety
    /// See `args::mechanism`.
    pub(crate) unsafe fn mechanism(&mut self, p: *const ck::CK_MECHANISM) {
        // SAFETY: per the caller.
        self.detail.mechanism = unsafe { args::mechanism(p) }.map(Arc::new);
    }

    /// The identity of `handle`, from the cache or read from the provider.
    fn identity(&self, handle: ck::CK_OBJECT_HANDLE) -> Arc<ObjectIdentity> {
        if let Some(id) = self.rt.context.lock().cached_key(handle as u64) {
            return id.clone();
        }
        let Some(session) = self.session else {
            return Arc::new(ObjectIdentity::handle_only(handle as u64));
        };
        // SAFETY: fetch_identity passes only buffers it owns.
        let (id, exists) = unsafe {
            fetch_identity(
                self.provider_table,
                session as ck::CK_SESSION_HANDLE,
                handle,
            )
        };
        let id = Arc::new(id);
        if exists {
            self.rt.context.lock().cache_key(handle as u64, id.clone());
        }
        id
    }

    pub(crate) fn key(&mut self, handle: ck::CK_OBJECT_HANDLE) {
        self.detail.key = Some(self.identity(handle));
    }

    pub(crate) fn key2(&mut self, handle: ck::CK_OBJECT_HANDLE) {
        self.detail.key2 = Some(self.identity(handle));
    }

    /// The object changes or goes away: its cached identity is no longer valid.
    pub(crate) fn forget_key(&self, handle: ck::CK_OBJECT_HANDLE) {
        self.rt.context.lock().forget_key(handle as u64);
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

    pub(crate) fn in_len(&mut self, len: ck::CK_ULONG) {
        self.detail.in_len = Some(len as u64);
    }

    // ---- operations ----------------------------------------------------------------------

    /// This *Init starts `op` with the mechanism and key recorded so far, if it succeeds.
    pub(crate) fn starts(&mut self, op: Op) {
        self.starts = Some(op);
    }

    /// This call belongs to `op`: its record carries the operation's mechanism and key.
    pub(crate) fn within(&mut self, op: Op) {
        let Some(session) = self.session else { return };
        if let Some(ctx) = self.rt.context.lock().op(session, op) {
            self.detail.mechanism = ctx.mechanism.clone();
            self.detail.key = ctx.key.clone();
        }
    }

    /// The operation is over (C_Verify and the message finals end it whatever they return).
    pub(crate) fn end_op(&self, op: Op) {
        if let Some(session) = self.session {
            self.rt.context.lock().end_op(session, op);
        }
    }

    /// After a multi-part Update: an error ends the operation, except CKR_BUFFER_TOO_SMALL
    /// for updates with output, after which it stays active (PKCS#11 2.40 §5.2).
    pub(crate) fn update_done(&mut self, op: Op, rv: ck::CK_RV) {
        if !matches!(rv, ck::CKR_OK | ck::CKR_BUFFER_TOO_SMALL) {
            self.end_op(op);
        }
    }

    /// After a single-part call or a Final that returns output in `buf` / `*len`.
    /// The operation stays active after a length query (NULL buffer, CKR_OK) and after
    /// CKR_BUFFER_TOO_SMALL (PKCS#11 2.40 §5.2); anything else ends it.
    ///
    /// # Safety
    /// `len` must be NULL or readable; if the provider returned output, `buf` holds `*len`
    /// writable bytes.
    pub(crate) unsafe fn output_final(
        &mut self,
        op: Option<Op>,
        buf: *mut u8,
        len: *const ck::CK_ULONG,
        rv: ck::CK_RV,
    ) {
        // SAFETY: per the caller.
        let still_active = unsafe { self.output(buf, len, rv) };
        if let Some(op) = op {
            if !still_active {
                self.end_op(op);
            }
        }
    }

    /// Records an output buffer's fate; returns true if the operation stays active
    /// (length query or buffer too small).
    ///
    /// # Safety
    /// As `output_final`.
    pub(crate) unsafe fn output(
        &mut self,
        buf: *mut u8,
        len: *const ck::CK_ULONG,
        rv: ck::CK_RV,
    ) -> bool {
        // SAFETY: per the caller.
        let out_len = unsafe { args::read(len) }.map(|l| l as u64);
        // On other errors *len is whatever the caller passed in: not an output length.
        if matches!(rv, ck::CKR_OK | ck::CKR_BUFFER_TOO_SMALL) {
            self.detail.out_len = out_len;
        }
        match rv {
            ck::CKR_OK if buf.is_null() => {
                self.detail.out = Some(OutputDisposition::LengthQuery);
                true
            }
            ck::CKR_BUFFER_TOO_SMALL => {
                self.detail.out = Some(OutputDisposition::BufferTooSmall);
                true
            }
            ck::CKR_OK => {
                self.detail.out = Some(OutputDisposition::Returned);
                self.hands_out = true;
                if let Some(n) = out_len {
                    let n = self.within_capacity(buf, n as usize);
                    self.outputs.push((buf, n));
                }
                false
            }
            _ => false,
        }
    }

    /// Before the call: the application's output buffer `buf` and its size `*len`.
    ///
    /// # Safety
    /// `len` must be NULL or readable.
    pub(crate) unsafe fn output_buffer(&mut self, buf: *mut u8, len: *const ck::CK_ULONG) {
        // SAFETY: per the caller.
        if let (false, Some(cap)) = (buf.is_null(), unsafe { args::read(len) }) {
            self.output_capacity = Some((buf, cap as usize));
        }
    }

    /// Before the call: the application's output buffer `buf` of `bytes` (C_FindObjects'
    /// handle array, C_GenerateRandom's buffer).
    pub(crate) fn given_buffer(&mut self, buf: *mut u8, bytes: usize) {
        if !buf.is_null() {
            self.output_capacity = Some((buf, bytes));
        }
    }

    /// After a failure inside p11audit once the provider had answered: zeroes every buffer the
    /// application gave for output, whole (what the provider wrote there is not known).
    fn wipe_given_buffers(&self) {
        let attributes = self
            .attribute_buffers
            .iter()
            .filter(|&&(_, cap)| cap != ck::CK_UNAVAILABLE_INFORMATION)
            .map(|&(buf, cap)| (buf, cap as usize));
        for (buf, len) in self.output_capacity.into_iter().chain(attributes) {
            if !buf.is_null() {
                // SAFETY: the application gave `buf` for output with room for `len` bytes
                // (its own size, recorded before the call).
                unsafe { std::ptr::write_bytes(buf, 0, len) };
            }
        }
    }

    /// `len` bytes at `buf`, or fewer if the application said its buffer there is smaller.
    fn within_capacity(&self, buf: *const u8, len: usize) -> usize {
        match self.output_capacity {
            Some((b, cap)) if b.cast_const() == buf => len.min(cap),
            _ => len,
        }
    }

    /// The size the application gave for attribute `i`'s buffer (C_GetAttributeValue).
    fn attribute_capacity(&self, i: usize) -> Option<ck::CK_ULONG> {
        self.attribute_buffers.get(i).map(|&(_, cap)| cap)
    }

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

    /// The result is the return value itself (C_Verify's verdict): its record comes first.
    pub(crate) fn verdict(&mut self) {
        self.hands_out = true;
    }

    /// Output the caller must not see if the record cannot be written.
    pub(crate) fn output_region(&mut self, buf: *mut u8, len: usize) {
        self.hands_out = true;
        self.detail.out = Some(OutputDisposition::Returned);
        if !buf.is_null() && len > 0 {
            self.outputs.push((buf, len));
        }
    }

    /// An object the call created: its handle and identity (read from the provider and cached,
    /// so later use of the key costs no extra call).
    ///
    /// # Safety
    /// `p` must be NULL or readable.
    pub(crate) unsafe fn created(&mut self, p: *const ck::CK_OBJECT_HANDLE, rv: ck::CK_RV) {
        if rv == ck::CKR_OK {
            // SAFETY: per the caller.
            if let Some(h) = unsafe { args::read(p) } {
                let identity = self.identity(h);
                self.detail.created.push(identity);
            }
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
            self.rt.context.lock().session_opened(h as u64, slot as u64);
            self.session = Some(h as u64);
            self.detail.session = Some(h as u64);
        }
    }

    pub(crate) fn session_closed(&mut self, session: ck::CK_SESSION_HANDLE) {
        self.rt.context.lock().session_closed(session as u64);
    }

    pub(crate) fn all_sessions_closed(&mut self, slot: ck::CK_SLOT_ID) {
        self.rt.context.lock().all_sessions_closed(slot as u64);
    }

    /// C_InitToken succeeded: the token's label, objects and logins are new.
    pub(crate) fn token_reinitialized(&mut self, slot: ck::CK_SLOT_ID) {
        let mut ctx = self.rt.context.lock();
        ctx.set_token(slot as u64, None);
        ctx.set_login(slot as u64, LoginState::Public);
    }

    /// After C_GetAttributeValue: which attributes were read, their lengths, and allowlisted
    /// values. Every returned value is output the caller must not see without a record.
    ///
    /// # Safety
    /// `template` must be NULL or point to `count` attributes whose non-NULL `pValue` hold as
    /// many bytes as their `ulValueLen` said before the call (`attribute_buffers`).
    pub(crate) unsafe fn attributes_read(
        &mut self,
        template: *const ck::CK_ATTRIBUTE,
        count: ck::CK_ULONG,
        rv: ck::CK_RV,
    ) {
        // Per PKCS#11 2.40 §5.7 these return values still fill every attribute they can.
        let filled = matches!(
            rv,
            ck::CKR_OK
                | ck::CKR_ATTRIBUTE_SENSITIVE
                | ck::CKR_ATTRIBUTE_TYPE_INVALID
                | ck::CKR_BUFFER_TOO_SMALL
        );
        // SAFETY: per the caller.
        let summary =
            unsafe { args::template(template, count, filled, |i| self.attribute_capacity(i)) };
        self.detail.template = Some(summary);
        if !filled || template.is_null() {
            return;
        }
        self.hands_out = true;
        for i in 0..count as usize {
            // SAFETY: i < count.
            let Some(a) = (unsafe { args::read(template.add(i)) }) else {
                break;
            };
            if !a.pValue.is_null() && a.ulValueLen != ck::CK_UNAVAILABLE_INFORMATION {
                let len = self
                    .attribute_capacity(i)
                    .map_or(a.ulValueLen, |cap| a.ulValueLen.min(cap));
                self.outputs.push((a.pValue as *mut u8, len as usize));
            }
        }
    }

    /// After C_FindObjects: how many handles were returned (into an array of `max`).
    ///
    /// # Safety
    /// `found` must be NULL or readable; `objects` holds `max` handles.
    pub(crate) unsafe fn objects_found(
        &mut self,
        objects: *mut ck::CK_OBJECT_HANDLE,
        max: ck::CK_ULONG,
        found: *const ck::CK_ULONG,
        rv: ck::CK_RV,
    ) {
        if rv != ck::CKR_OK {
            return;
        }
        // SAFETY: per the caller.
        let reported = unsafe { args::read(found) }.unwrap_or(0);
        self.detail.count = Some(reported as u64);
        // A provider cannot have returned more than the array holds (PKCS#11 §5.10); one that
        // says so must not make p11audit read or wipe past it.
        let n = reported.min(max);
        if !objects.is_null() {
            for i in 0..(n as usize).min(MAX_LOGGED_HANDLES) {
                // SAFETY: i < n <= max, the array's length.
                self.detail
                    .found
                    .push(unsafe { objects.add(i).read_unaligned() } as u64);
            }
        }
        self.output_region(
            objects as *mut u8,
            (n as usize).saturating_mul(std::mem::size_of::<ck::CK_OBJECT_HANDLE>()),
        );
    }

    pub(crate) fn set_login(&mut self, state: LoginState) {
        let Some(session) = self.session else { return };
        let mut ctx = self.rt.context.lock();
        if let Some(slot) = ctx.slot_of(session) {
            ctx.set_login(slot, state);
        }
    }

    // ---- the flow ------------------------------------------------------------------------

    /// Writes the intent of an acting call. Err: do not forward.
    fn write_intent(&mut self) -> Result<Option<u64>, ShimError> {
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

    /// Writes (or queues) the outcome and decides what the caller gets.
    fn finish(&mut self, rv: ck::CK_RV, started: Instant, intent: Option<u64>) -> ck::CK_RV {
        if rv == ck::CKR_OK {
            if let (Some(op), Some(session)) = (self.starts, self.session) {
                let ctx = OpContext {
                    mechanism: self.detail.mechanism.clone(),
                    key: self.detail.key.clone(),
                };
                self.rt.context.lock().start_op(session, op, ctx);
            }
        }
        self.refresh_session_view();
        let mut outcome = self.take_record(Event::Outcome);
        outcome.detail.rv = Some(rv_named(rv));
        outcome.detail.dur_us = Some(started.elapsed().as_micros() as u64);
        outcome.detail.intent = intent;
        if intent.is_some() {
            // The intent already carries the templates.
            outcome.detail.template = None;
            outcome.detail.template2 = None;
        }
        let must_write = self.hands_out && matches!(self.kind, Kind::Result | Kind::ActingResult);
        if !must_write {
            self.rt.auditor.wait(&outcome);
            return rv;
        }
        match self.rt.auditor.write(&outcome) {
            Ok(_) => rv,
            Err(_) if self.rt.auditor.policy() == FailurePolicy::Open => rv,
            Err(_) => {
                for &(buf, len) in &self.outputs {
                    // SAFETY: `buf` is the application's buffer and `len` is at most the size
                    // it gave for it before the call (`within_capacity`, the attribute and
                    // `max` caps), and at most what the provider reports having written.
                    unsafe { std::ptr::write_bytes(buf, 0, len) };
                }
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
    super::guard(|| {
        let Some(rt) = super::runtime() else {
            // Not configured: nothing can be forwarded.
            return ShimError::NotInitialized.rv();
        };
        let mut call = Call::new(rt, function, kind, for_2x);
        before(&mut call);
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

/// Reads CKA_CLASS, CKA_KEY_TYPE, CKA_LABEL and CKA_ID of `handle` in one call. Returns the
/// identity and whether the object exists (so the identity may be cached).
///
/// # Safety
/// Calls the provider with buffers owned here.
unsafe fn fetch_identity(
    f: &ck::CK_FUNCTION_LIST_3_2,
    session: ck::CK_SESSION_HANDLE,
    handle: ck::CK_OBJECT_HANDLE,
) -> (ObjectIdentity, bool) {
    let mut id = ObjectIdentity::handle_only(handle as u64);
    let Some(get) = f.C_GetAttributeValue else {
        return (id, false);
    };
    let mut class: ck::CK_ULONG = 0;
    let mut key_type: ck::CK_ULONG = 0;
    let mut label = [0u8; 256];
    let mut obj_id = [0u8; 256];
    let ulong = std::mem::size_of::<ck::CK_ULONG>() as ck::CK_ULONG;
    let mut tmpl = [
        ck::CK_ATTRIBUTE {
            type_: ck::CKA_CLASS,
            pValue: &mut class as *mut _ as *mut _,
            ulValueLen: ulong,
        },
        ck::CK_ATTRIBUTE {
            type_: ck::CKA_KEY_TYPE,
            pValue: &mut key_type as *mut _ as *mut _,
            ulValueLen: ulong,
        },
        ck::CK_ATTRIBUTE {
            type_: ck::CKA_LABEL,
            pValue: label.as_mut_ptr() as *mut _,
            ulValueLen: 256,
        },
        ck::CK_ATTRIBUTE {
            type_: ck::CKA_ID,
            pValue: obj_id.as_mut_ptr() as *mut _,
            ulValueLen: 256,
        },
    ];
    // SAFETY: every pValue points to a buffer of its ulValueLen, owned by this frame.
    let rv = unsafe {
        get(
            session,
            handle,
            tmpl.as_mut_ptr(),
            tmpl.len() as ck::CK_ULONG,
        )
    };
    let exists = matches!(
        rv,
        ck::CKR_OK
            | ck::CKR_ATTRIBUTE_SENSITIVE
            | ck::CKR_ATTRIBUTE_TYPE_INVALID
            | ck::CKR_BUFFER_TOO_SMALL
    );
    if !exists {
        return (id, false);
    }
    let got = |a: &ck::CK_ATTRIBUTE, cap: usize| {
        a.ulValueLen != ck::CK_UNAVAILABLE_INFORMATION && (a.ulValueLen as usize) <= cap
    };
    use crate::format::names::{key_type_name, object_class_name};
    if got(&tmpl[0], 8) {
        id.class = Some(Named::new(object_class_name(class as u64), class as u64));
    }
    if got(&tmpl[1], 8) {
        id.key_type = Some(Named::new(key_type_name(key_type as u64), key_type as u64));
    }
    if got(&tmpl[2], 256) {
        id.label = Some(Bytes::from_slice(&label[..tmpl[2].ulValueLen as usize]));
    }
    if got(&tmpl[3], 256) {
        id.id = Some(Bytes::hex(&obj_id[..tmpl[3].ulValueLen as usize]));
    }
    (id, true)
}

/// Argument edge cases no real provider produces: a provider that reports more output than the
/// application's buffer holds (against PKCS#11). The provider's side is played by writing the
/// lengths it would report straight into the arguments; no provider is called.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::AttributeValue;
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
