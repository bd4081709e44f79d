//! The JSON body of a record, written by hand.
//!
//! Every audited call builds two to four records, so their encoding is on the hot path. serde's
//! derive (with `#[serde(flatten)]` for the detail) spends most of its time in generic
//! machinery; this writer appends the same bytes straight into a reused buffer. The unit tests
//! check it byte for byte against `serde_json::to_string` of the same record (the derive stays
//! as that oracle), including hostile strings.

use crate::format::chain::push_hex_lower_str;
use crate::format::record::{
    AttributeSummary, AttributeValue, Bytes, Detail, Event, FoldedInit, MechanismSummary, Named,
    ObjectIdentity, OutputDisposition, ParamValue, PeerIdentity, Record, TokenRef,
};

impl Record {
    /// The JSON body (`{...}`) the writer seals: the bytes `serde_json::to_string` would give,
    /// written by [`push_record`]. Here rather than beside `Record`, so that the model does not
    /// depend on its encoder.
    pub fn to_body(&self) -> String {
        let mut body = String::with_capacity(640);
        push_record(&mut body, self);
        body
    }
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it: `"` and `\`, the
/// short escapes `\b \f \n \r \t`, and other control characters below 0x20 as `\u00xx`.
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    // Most strings need no escaping: find the next byte that does, copy the run before it.
    while let Some(n) = first_needing_escape(&bytes[start..]) {
        let i = start + n;
        let b = bytes[i];
        // Both ends are at ASCII bytes, so the slice is on char boundaries.
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                out.push_str("\\u00");
                push_hex_lower_str(out, &[b]);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The bytes JSON strings must escape: quote, backslash and control characters.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Index of the first byte of `bytes` that `needs_escape`. Eight bytes at a time: a record is
/// about 600 bytes of strings, and a byte-by-byte scan was a tenth of its encoding time.
fn first_needing_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of a byte of the result is set for a zero byte of `w` (exact as a whole:
    // non-zero iff some byte of `w` is zero; the classic "haszero" test).
    fn has_zero_byte(w: u64) -> bool {
        w.wrapping_sub(ONES) & !w & HIGHS != 0
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // A byte below 0x20 (with its high bit clear), a quote or a backslash.
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0;
        let quote = has_zero_byte(w ^ (ONES * u64::from(b'"')));
        let backslash = has_zero_byte(w ^ (ONES * u64::from(b'\\')));
        if control || quote || backslash {
            if let Some(n) = chunk.iter().position(|&b| needs_escape(b)) {
                return Some(at + n);
            }
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|n| at + n)
}

/// Appends `n` in decimal.
pub(crate) fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn push_i64(out: &mut String, n: i64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Writes `"name":` with the separating comma; `first` is cleared after the first member.
struct Members<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Members<'a> {
    fn open(out: &'a mut String) -> Self {
        out.push('{');
        Members { out, first: true }
    }

    /// `name` is a fixed member name: plain ASCII, no escaping needed.
    fn key(&mut self, name: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
        self.out
    }

    /// A member whose name is data (a mechanism parameter's), escaped as any string.
    fn escaped_key(&mut self, name: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_str(self.out, name);
        self.out.push(':');
        self.out
    }

    fn str(&mut self, name: &str, value: &str) {
        push_str(self.key(name), value);
    }

    fn num(&mut self, name: &str, value: u64) {
        push_u64(self.key(name), value);
    }

    fn opt_num(&mut self, name: &str, value: Option<u64>) {
        if let Some(v) = value {
            self.num(name, v);
        }
    }

    fn close(self) {
        self.out.push('}');
    }
}

fn push_bytes(out: &mut String, b: &Bytes) {
    match b {
        Bytes::Text(t) => push_str(out, t),
        Bytes::Hex(h) => {
            let mut m = Members::open(out);
            m.str("hex", h);
            m.close();
        }
    }
}

fn push_token(out: &mut String, t: &TokenRef) {
    let mut m = Members::open(out);
    push_bytes(m.key("label"), &t.label);
    push_bytes(m.key("serial"), &t.serial);
    m.close();
}

fn push_peer(out: &mut String, p: &PeerIdentity) {
    let mut m = Members::open(out);
    m.num("pid", u64::from(p.pid));
    m.num("uid", u64::from(p.uid));
    m.num("gid", u64::from(p.gid));
    if let Some(exe) = &p.exe {
        push_bytes(m.key("exe"), exe);
    }
    m.opt_num("auid", p.auid.map(u64::from));
    m.opt_num("session", p.session.map(u64::from));
    m.close();
}

fn push_object(out: &mut String, o: &ObjectIdentity) {
    let mut m = Members::open(out);
    m.opt_num("handle", o.handle);
    if let Some(c) = &o.class {
        m.str("class", &c.0);
    }
    if let Some(k) = &o.key_type {
        m.str("key_type", &k.0);
    }
    if let Some(l) = &o.label {
        push_bytes(m.key("label"), l);
    }
    if let Some(i) = &o.id {
        push_bytes(m.key("id"), i);
    }
    m.close();
}

fn push_mechanism(out: &mut String, mech: &MechanismSummary) {
    let mut m = Members::open(out);
    m.str("type", &mech.mechanism.0);
    m.opt_num("param_len", mech.param_len);
    if !mech.params.is_empty() {
        let mut p = Members::open(m.key("params"));
        // The shim's names are fixed ASCII, but the type takes any text (a reader's): escaped
        // like any string, so every value of the type encodes as serde_json would.
        for (name, value) in &mech.params {
            let out = p.escaped_key(name);
            match value {
                ParamValue::Name(Named(n)) => push_str(out, n),
                ParamValue::Number(n) => push_u64(out, *n),
            }
        }
        p.close();
    }
    m.close();
}

fn push_template(out: &mut String, attrs: &[AttributeSummary]) {
    out.push('[');
    for (i, a) in attrs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut m = Members::open(out);
        m.str("type", &a.attr.0);
        push_i64(m.key("len"), a.len);
        if let Some(v) = &a.value {
            let o = m.key("value");
            match v {
                AttributeValue::Bool(b) => o.push_str(if *b { "true" } else { "false" }),
                AttributeValue::Number(n) => push_u64(o, *n),
                AttributeValue::Name(Named(n)) => push_str(o, n),
                AttributeValue::Bytes(b) => push_bytes(o, b),
            }
        }
        m.close();
    }
    out.push(']');
}

fn event_name(ev: Event) -> &'static str {
    match ev {
        Event::Intent => "intent",
        Event::Outcome => "outcome",
        Event::Start => "start",
        Event::Attach => "attach",
        Event::Close => "close",
        Event::Gap => "gap",
        Event::Rotate => "rotate",
        Event::Checkpoint => "checkpoint",
    }
}

fn output_name(out: OutputDisposition) -> &'static str {
    match out {
        OutputDisposition::LengthQuery => "length_query",
        OutputDisposition::BufferTooSmall => "buffer_too_small",
        OutputDisposition::Returned => "returned",
        OutputDisposition::Withheld => "withheld",
    }
}

/// Appends the record's JSON body (`{...}`, the same bytes as `serde_json::to_string`).
pub(crate) fn push_record(out: &mut String, r: &Record) {
    let mut m = Members::open(out);
    m.str("ts", &r.ts);
    m.str("host", &r.host);
    m.num("pid", u64::from(r.pid));
    m.num("tid", r.tid);
    m.num("uid", u64::from(r.uid));
    push_bytes(m.key("exe"), r.exe.bytes());
    m.opt_num("auid", r.auid.map(u64::from));
    m.opt_num("ses", r.ses.map(u64::from));
    if let Some(p) = &r.peer {
        push_peer(m.key("peer"), p);
    }
    m.str("ev", event_name(r.ev));
    if let Some(f) = r.function {
        m.str("fn", f);
    }
    push_detail(&mut m, &r.detail);
    m.close();
}

fn push_folded_init(out: &mut String, init: &FoldedInit) {
    let mut m = Members::open(out);
    m.str("fn", init.function);
    m.str("ts", &init.ts);
    m.opt_num("tid", init.tid);
    m.num("dur_us", init.dur_us);
    if let Some(t) = &init.template {
        push_template(m.key("template"), t);
    }
    m.opt_num("sig_len", init.sig_len);
    m.close();
}

fn push_detail(m: &mut Members<'_>, d: &Detail) {
    if let Some(rv) = &d.rv {
        m.str("rv", &rv.0);
    }
    m.opt_num("dur_us", d.dur_us);
    m.opt_num("intent", d.intent);
    m.opt_num("slot", d.slot);
    if let Some(t) = &d.token {
        push_token(m.key("token"), t);
    }
    m.opt_num("session", d.session);
    if let Some(l) = d.login {
        m.str("login", l);
    }
    if let Some(u) = &d.user_type {
        m.str("user_type", &u.0);
    }
    m.opt_num("flags", d.flags);
    if let Some(mech) = &d.mechanism {
        push_mechanism(m.key("mechanism"), mech);
    }
    if let Some(k) = &d.key {
        push_object(m.key("key"), k);
    }
    if let Some(k) = &d.key2 {
        push_object(m.key("key2"), k);
    }
    if let Some(t) = &d.template {
        push_template(m.key("template"), t);
    }
    if let Some(t) = &d.template2 {
        push_template(m.key("template2"), t);
    }
    m.opt_num("in_len", d.in_len);
    m.opt_num("out_len", d.out_len);
    m.opt_num("sig_len", d.sig_len);
    if let Some(o) = d.out {
        m.str("out", output_name(o));
    }
    m.opt_num("len_queries", d.len_queries);
    if let Some(init) = &d.init {
        push_folded_init(m.key("init"), init);
    }
    m.opt_num("count", d.count);
    if !d.created.is_empty() {
        let out = m.key("created");
        out.push('[');
        for (i, o) in d.created.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_object(out, o);
        }
        out.push(']');
    }
    if !d.found.is_empty() {
        let out = m.key("found");
        out.push('[');
        for (i, h) in d.found.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_u64(out, *h);
        }
        out.push(']');
    }
    if let Some(u) = &d.username {
        push_bytes(m.key("username"), u);
    }
    if let Some(i) = &d.interface {
        m.str("interface", i);
    }
    m.opt_num("lost", d.lost);
    if let Some(s) = &d.since {
        m.str("since", s);
    }
    if let Some(r) = &d.renamed_to {
        m.str("renamed_to", r);
    }
    if let Some(n) = &d.next {
        m.str("next", n);
    }
    if let Some(n) = &d.note {
        m.str("note", n);
    }
    if let Some(c) = &d.checkpoint {
        m.str("checkpoint", c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::ProcessIdentity;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn hostile() -> Vec<String> {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€\u{7f}\u{80}\u{9b}\u{2028}😀");
        vec![
            String::new(),
            "plain".into(),
            "a\"b\\c\nd\0e\x1b[31m".into(),
            all,
        ]
    }

    fn full_record(s: &str) -> Record {
        let who = ProcessIdentity {
            host: s.into(),
            pid: 4_294_967_295,
            uid: 0,
            exe: format!("/bin/{s}").into(),
            auid: Some(u32::MAX - 1),
            ses: Some(7),
            peer: Some(Arc::new(crate::format::record::PeerIdentity {
                pid: u32::MAX,
                uid: 1000,
                gid: 0,
                exe: Some(Bytes::from_slice(s.as_bytes())),
                auid: Some(0),
                session: Some(u32::MAX - 1),
            })),
        };
        let mut r = Record::new(&who, u64::MAX, Event::Outcome, Some("C_GenerateKeyPair"));
        let obj = |h| ObjectIdentity {
            handle: Some(h),
            class: Some(Named::new(Some("CKO_SECRET_KEY"), 4)),
            key_type: Some(Named::new(None, 0x8000_0001)),
            label: Some(Bytes::Text(s.into())),
            id: Some(Bytes::hex(s.as_bytes())),
        };
        let mut params = BTreeMap::new();
        params.insert(
            "hash".into(),
            ParamValue::Name(Named::new(Some("CKM_SHA256"), 0x250)),
        );
        params.insert("tag_bits".into(), ParamValue::Number(128));
        params.insert(s.to_string().into(), ParamValue::Number(1));
        let attrs = vec![
            AttributeSummary {
                attr: Named::new(Some("CKA_LABEL"), 3),
                len: -1,
                value: Some(AttributeValue::Bytes(Bytes::Text(s.into()))),
            },
            AttributeSummary {
                attr: Named::new(Some("CKA_TOKEN"), 1),
                len: 1,
                value: Some(AttributeValue::Bool(true)),
            },
            AttributeSummary {
                attr: Named::new(Some("CKA_VALUE_LEN"), 0x161),
                len: 8,
                value: Some(AttributeValue::Number(32)),
            },
            AttributeSummary {
                attr: Named::new(Some("CKA_KEY_TYPE"), 0x100),
                len: 8,
                value: Some(AttributeValue::Name(Named::new(Some("CKK_AES"), 0x1f))),
            },
            AttributeSummary {
                attr: Named::new(Some("CKA_VALUE"), 0x11),
                len: 32,
                value: None,
            },
        ];
        r.detail = Detail {
            rv: Some(Named::new(Some("CKR_OK"), 0)),
            dur_us: Some(0),
            intent: Some(7),
            slot: Some(1),
            token: Some(Arc::new(TokenRef {
                label: Bytes::Text(s.into()),
                serial: Bytes::Hex("ff00".into()),
            })),
            session: Some(2),
            login: Some("user"),
            user_type: Some(Named::new(Some("CKU_USER"), 1)),
            flags: Some(6),
            mechanism: Some(Arc::new(MechanismSummary {
                mechanism: Named::new(Some("CKM_AES_GCM"), 0x1087),
                param_len: Some(40),
                params,
            })),
            key: Some(Arc::new(obj(5))),
            key2: Some(Arc::new(ObjectIdentity::handle_only(6))),
            template: Some(attrs.clone()),
            template2: Some(vec![]),
            in_len: Some(1),
            out_len: Some(u64::MAX),
            sig_len: Some(64),
            out: Some(OutputDisposition::BufferTooSmall),
            len_queries: Some(2),
            init: Some(Box::new(FoldedInit {
                function: "C_FindObjectsInit",
                ts: r.ts,
                tid: Some(9),
                dur_us: 4,
                template: Some(attrs.clone()),
                sig_len: Some(64),
            })),
            count: Some(3),
            created: vec![Arc::new(obj(8)), Arc::new(obj(9))],
            found: vec![1, 2, 3],
            username: Some(Bytes::Text(s.into())),
            interface: Some(s.into()),
            lost: Some(12),
            since: Some(s.into()),
            renamed_to: Some(s.into()),
            next: Some(s.into()),
            note: Some(s.into()),
            checkpoint: Some(s.into()),
        };
        r
    }

    fn same_as_serde(r: &Record) {
        let mut fast = String::new();
        push_record(&mut fast, r);
        assert_eq!(fast, serde_json::to_string(r).unwrap());
    }

    #[test]
    fn every_member_matches_serde_json() {
        for s in hostile() {
            same_as_serde(&full_record(&s));
        }
    }

    #[test]
    fn sparse_records_match_serde_json() {
        let who = ProcessIdentity {
            host: "h".into(),
            pid: 1,
            uid: 2,
            exe: "/x".into(),
            auid: None,
            ses: None,
            peer: None,
        };
        for ev in [
            Event::Intent,
            Event::Outcome,
            Event::Start,
            Event::Attach,
            Event::Close,
            Event::Gap,
            Event::Rotate,
            Event::Checkpoint,
        ] {
            same_as_serde(&Record::new(&who, 3, ev, None));
        }
        // An executable path that is not UTF-8: hex, never U+FFFD.
        let who = ProcessIdentity {
            exe: crate::format::record::ExePath::from_bytes(b"/tmp/a\xff"),
            ..who
        };
        let r = Record::new(&who, 3, Event::Attach, Some("C_Initialize"));
        same_as_serde(&r);
        assert!(
            r.to_body().contains(r#""exe":{"hex":"2f746d702f61ff"},"#),
            "{}",
            r.to_body()
        );
        for out in [
            OutputDisposition::LengthQuery,
            OutputDisposition::BufferTooSmall,
            OutputDisposition::Returned,
            OutputDisposition::Withheld,
        ] {
            let mut r = Record::new(&who, 3, Event::Outcome, Some("C_Sign"));
            r.detail.out = Some(out);
            r.detail.mechanism = Some(Arc::new(MechanismSummary {
                mechanism: Named::new(None, 0x8000_0000),
                param_len: None,
                params: BTreeMap::new(),
            }));
            same_as_serde(&r);
        }
    }

    #[test]
    fn the_word_scan_finds_the_first_byte_to_escape_wherever_it_is() {
        // Every byte value at every position of strings 0..24 bytes long (three words and a
        // remainder), in a run of plain ASCII or of bytes >= 0x80, against a byte-by-byte scan.
        for fill in [b'a', 0x7f, 0x80, 0xff, 0x20, 0x21, 0x5b, 0x5d] {
            for len in 0..24 {
                for at in 0..len {
                    for b in 0u8..=255 {
                        let mut bytes = vec![fill; len];
                        bytes[at] = b;
                        let expected = bytes.iter().position(|&b| needs_escape(b));
                        assert_eq!(first_needing_escape(&bytes), expected, "{bytes:?}");
                    }
                }
                assert_eq!(first_needing_escape(&vec![fill; len]), None);
            }
        }
    }

    #[test]
    fn every_byte_string_escapes_like_serde_json() {
        for b in 0u8..=0x7f {
            let s = String::from(char::from(b));
            let mut fast = String::new();
            push_str(&mut fast, &s);
            assert_eq!(fast, serde_json::to_string(&s).unwrap(), "byte {b:#x}");
        }
        for n in [0, 9, 10, 99, 100, u64::MAX] {
            let mut fast = String::new();
            push_u64(&mut fast, n);
            assert_eq!(fast, n.to_string());
        }
    }
}
