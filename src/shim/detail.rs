//! What a call's record says beyond its arguments, from what p11audit remembers between calls
//! (`context`): the session's slot and token, the login state, the identity of each key, and
//! the operation a call starts, continues or ends.

use super::args;
use super::call::Call;
use crate::format::names::user_type_name;
use crate::format::record::{
    AttributeSummary, AttributeValue, Bytes, Named, ObjectIdentity, TokenRef,
};
use crate::shim::context::{LoginState, Op};
use cryptoki_sys as ck;
use std::sync::Arc;

/// A token's label and serial, blank padding trimmed.
pub(super) fn token_ref(info: &ck::CK_TOKEN_INFO) -> TokenRef {
    TokenRef {
        label: Bytes::from_slice(args::trim_padded(&info.label)),
        serial: Bytes::from_slice(args::trim_padded(&info.serialNumber)),
    }
}

impl Call<'_> {
    /// The call acts on `session`: records the session, its slot, token and login state as they
    /// are before the call (read again after it only if the call changes them).
    pub(crate) fn session(&mut self, session: ck::CK_SESSION_HANDLE) {
        let session = session as u64;
        self.session = Some(session);
        self.detail.session = Some(session);
        self.refresh_session_view();
    }

    pub(super) fn refresh_session_view(&mut self) {
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

    pub(super) fn ensure_token(&self, slot: ck::CK_SLOT_ID) {
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

    pub(crate) fn user_type(&mut self, user: ck::CK_USER_TYPE) {
        self.detail.user_type = Some(Named::new(user_type_name(user as u64), user as u64));
    }

    /// The identity of `handle`, from the cache or read from the provider.
    pub(super) fn identity(&self, handle: ck::CK_OBJECT_HANDLE) -> Arc<ObjectIdentity> {
        if let Some(id) = self.rt.context.lock().cached_key(handle as u64) {
            return id.clone();
        }
        self.complete_identity(ObjectIdentity::handle_only(handle as u64), handle)
    }

    /// The identity of an object this call made with `template`: class, key type, label and
    /// id as the template names them (PKCS#11 2.40 §4.4: the object gets the template's
    /// values), and only what it does not name read from the provider.
    pub(super) fn identity_of_new(
        &self,
        handle: ck::CK_OBJECT_HANDLE,
        template: Option<&[AttributeSummary]>,
    ) -> Arc<ObjectIdentity> {
        let known = identity_from_template(handle as u64, template.unwrap_or_default());
        self.complete_identity(known, handle)
    }

    /// `known` with what it lacks read from the provider (nothing is read when it lacks
    /// nothing), cached if the object exists.
    fn complete_identity(
        &self,
        known: ObjectIdentity,
        handle: ck::CK_OBJECT_HANDLE,
    ) -> Arc<ObjectIdentity> {
        let Some(session) = self.session else {
            return Arc::new(known);
        };
        // SAFETY: fetch_identity passes only buffers it owns.
        let (id, exists) = unsafe {
            fetch_identity(
                self.provider_table,
                session as ck::CK_SESSION_HANDLE,
                handle,
                known,
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

    pub(crate) fn in_len(&mut self, len: ck::CK_ULONG) {
        self.detail.in_len = Some(len as u64);
    }

    /// This *Init starts `op` with the mechanism and key recorded so far, if it succeeds.
    pub(crate) fn starts(&mut self, op: Op) {
        self.starts = Some(op);
    }

    /// This call belongs to `op`: its record carries the operation's mechanism and key, and,
    /// as the operation's first outcome, the init held for it.
    pub(crate) fn within(&mut self, op: Op) {
        self.within = Some(op);
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

    pub(crate) fn session_closed(&mut self, session: ck::CK_SESSION_HANDLE) {
        self.changes_session_view = true;
        self.rt.context.lock().session_closed(session as u64);
    }

    pub(crate) fn all_sessions_closed(&mut self, slot: ck::CK_SLOT_ID) {
        self.changes_session_view = true;
        self.rt.context.lock().all_sessions_closed(slot as u64);
    }

    /// C_InitToken succeeded: the token's label, objects and logins are new.
    pub(crate) fn token_reinitialized(&mut self, slot: ck::CK_SLOT_ID) {
        self.changes_session_view = true;
        let mut ctx = self.rt.context.lock();
        ctx.set_token(slot as u64, None);
        ctx.set_login(slot as u64, LoginState::Public);
    }

    pub(crate) fn set_login(&mut self, state: LoginState) {
        self.changes_session_view = true;
        let Some(session) = self.session else { return };
        let mut ctx = self.rt.context.lock();
        if let Some(slot) = ctx.slot_of(session) {
            ctx.set_login(slot, state);
        }
    }
}

/// Class, key type, label and id of a new object, as far as `template` names them with a
/// recorded value (a label or id too long to record is not known from it).
fn identity_from_template(handle: u64, template: &[AttributeSummary]) -> ObjectIdentity {
    let mut id = ObjectIdentity::handle_only(handle);
    for a in template {
        match (a.attr.as_str(), &a.value) {
            ("CKA_CLASS", Some(AttributeValue::Name(n))) => id.class = Some(n.clone()),
            ("CKA_KEY_TYPE", Some(AttributeValue::Name(n))) => id.key_type = Some(n.clone()),
            ("CKA_LABEL", Some(AttributeValue::Bytes(b))) => id.label = Some(b.clone()),
            ("CKA_ID", Some(AttributeValue::Bytes(b))) => id.id = Some(b.clone()),
            _ => {}
        }
    }
    id
}

/// Reads what `known` lacks of CKA_CLASS, CKA_KEY_TYPE, CKA_LABEL and CKA_ID of `handle`, in
/// one call (none when it lacks nothing). Returns the identity and whether the object exists
/// (so the identity may be cached).
///
/// # Safety
/// Calls the provider with buffers owned here.
pub(super) unsafe fn fetch_identity(
    f: &ck::CK_FUNCTION_LIST_3_2,
    session: ck::CK_SESSION_HANDLE,
    handle: ck::CK_OBJECT_HANDLE,
    known: ObjectIdentity,
) -> (ObjectIdentity, bool) {
    let mut id = known;
    let missing = [
        id.class.is_none(),
        id.key_type.is_none(),
        id.label.is_none(),
        id.id.is_none(),
    ];
    if !missing.contains(&true) {
        return (id, true);
    }
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
    // Only the missing attributes are asked for, in the same order.
    let mut asked: Vec<ck::CK_ATTRIBUTE> = tmpl
        .iter()
        .zip(missing)
        .filter(|(_, m)| *m)
        .map(|(a, _)| *a)
        .collect();
    // SAFETY: every pValue points to a buffer of its ulValueLen, owned by this frame.
    let rv = unsafe {
        get(
            session,
            handle,
            asked.as_mut_ptr(),
            asked.len() as ck::CK_ULONG,
        )
    };
    let mut answers = asked.into_iter();
    for (slot, m) in tmpl.iter_mut().zip(missing) {
        let answer = if m { answers.next() } else { None };
        slot.ulValueLen = answer.map_or(ck::CK_UNAVAILABLE_INFORMATION, |a| a.ulValueLen);
    }
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
