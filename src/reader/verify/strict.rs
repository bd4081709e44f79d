//! Reading a line whose mac verified as a v1 record: the members the verifier uses by their
//! type, every other value to its end, refusing what JSON readers could read in two ways, so
//! that whatever reads a verified line reads the same record.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// The members the verifier reads. All others are read too, to their end, by [`Strict`]: see
/// [`parse_record`].
pub(super) struct Rec<'a> {
    pub(super) ts: Cow<'a, str>,
    pub(super) pid: u32,
    pub(super) exe: Exe<'a>,
    pub(super) ev: Cow<'a, str>,
    pub(super) function: Option<Cow<'a, str>>,
    pub(super) rv: Option<Cow<'a, str>>,
    pub(super) lost: Option<u64>,
}

/// Reads a line whose mac verified as a v1 record, refusing what JSON readers could read in
/// two ways, which p11audit never writes:
/// - bytes that are not UTF-8 (one reader stops, another replaces them with U+FFFD);
/// - a member name twice in one object, at any depth (one reader takes the first, another the
///   last, a third refuses the line);
/// - a `\u` escape that is not UTF-16: a lone surrogate such as `\ud800` (jq refuses the line,
///   other readers replace it).
///
/// One pass over the line: every value, also of members the verifier does not use, is parsed
/// to its end (strings decoded, which is where serde_json refuses a lone surrogate), and every
/// object's member names are compared.
pub(super) fn parse_record(line: &[u8]) -> Result<Rec<'_>, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "it is not UTF-8 (at byte {} of the line)",
            e.valid_up_to() + 1
        )
    })?;
    let mut names = Vec::with_capacity(48);
    let mut de = serde_json::Deserializer::from_str(text);
    let rec = RecSeed { names: &mut names }
        .deserialize(&mut de)
        .and_then(|rec| de.end().map(|()| rec))
        .map_err(|e| {
            // serde_json's words for a lone surrogate: "lone leading surrogate in hex escape"
            // (also for a trailing one) and "unexpected end of hex escape" (a leading one not
            // followed by a \u escape).
            let e = e.to_string();
            if e.contains("surrogate") || e.contains("end of hex escape") {
                format!("a \\u escape is not UTF-16 (a lone surrogate): {e}")
            } else {
                e
            }
        })?;
    Ok(rec)
}

/// A string value or member name, borrowed from the line when it holds no escape.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `exe` as a record holds it: text, or `{"hex": "…"}` for a path that is not UTF-8 (FORMAT.md
/// §3). Only that form: lowercase hex of bytes that are not UTF-8, so that every path has one
/// spelling and a text path cannot also be written as hex.
pub(super) enum Exe<'a> {
    Text(Cow<'a, str>),
    Hex(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Exe<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Exe<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or {\"hex\": string}")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Exe<'de>, E> {
                Ok(Exe::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Exe<'de>, E> {
                Ok(Exe::Text(Cow::Owned(v.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Exe<'de>, A::Error> {
                let mut hex: Option<Cow<'de, str>> = None;
                while let Some(Str(k)) = m.next_key::<Str<'de>>()? {
                    if k != "hex" {
                        return Err(de::Error::unknown_field(&k, &["hex"]));
                    }
                    if hex.is_some() {
                        return Err(de::Error::custom("the member name \"hex\" appears twice"));
                    }
                    hex = Some(m.next_value::<Str<'de>>()?.0);
                }
                let hex = hex.ok_or_else(|| de::Error::missing_field("hex"))?;
                // Lowercase only: the one spelling the shim writes.
                let bytes = base16ct::lower::decode_vec(hex.as_bytes()).ok();
                match bytes {
                    Some(b) if std::str::from_utf8(&b).is_err() => Ok(Exe::Hex(hex)),
                    Some(_) => Err(de::Error::custom(
                        "exe {\"hex\": …} holds UTF-8: a path that is UTF-8 is written as a string",
                    )),
                    None => Err(de::Error::custom(
                        "exe {\"hex\": …} is not lowercase hex of whole bytes",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `peer` (FORMAT.md §3): the kernel's numbers, and `exe` in its one spelling. serde's derive
/// refuses a member twice; members a later writer may add are read by serde_json to their end.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Peer<'a> {
    pid: u32,
    uid: u32,
    gid: u32,
    #[serde(borrow, default)]
    exe: Option<Exe<'a>>,
    #[serde(default)]
    auid: Option<u32>,
    #[serde(default)]
    session: Option<u32>,
}

/// Reads the record object: the members the verifier uses by their type, every other value by
/// [`Strict`]; refuses a member name that appears twice.
struct RecSeed<'s, 'de> {
    /// Member names of the objects being read, outermost first (shared by [`Strict`]).
    names: &'s mut Vec<Cow<'de, str>>,
}

impl<'s, 'de> DeserializeSeed<'de> for RecSeed<'s, 'de> {
    type Value = Rec<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Rec<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

fn twice<E: de::Error>(name: &str) -> E {
    E::custom(format_args!(
        "the member name {name:?} appears twice in one object"
    ))
}

impl<'s, 'de> Visitor<'de> for RecSeed<'s, 'de> {
    type Value = Rec<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a record (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Rec<'de>, A::Error> {
        let names = self.names;
        // Present and of their type, though not used: v, seq, prev, host, tid, uid, mac.
        let (mut v, mut seq, mut prev, mut host, mut tid, mut uid, mut mac) = (
            None::<u64>,
            None::<u64>,
            None,
            None,
            None::<u64>,
            None::<u32>,
            None,
        );
        let (mut ts, mut pid, mut exe, mut ev) = (None, None::<u32>, None, None);
        let (mut function, mut rv, mut lost) = (None, None, None::<u64>);
        while let Some(Str(name)) = m.next_key::<Str<'de>>()? {
            if names.contains(&name) {
                return Err(twice(&name));
            }
            match &*name {
                "v" => v = Some(m.next_value()?),
                "seq" => seq = Some(m.next_value()?),
                "prev" => prev = Some(m.next_value::<Str<'de>>()?),
                "ts" => ts = Some(m.next_value::<Str<'de>>()?.0),
                "host" => host = Some(m.next_value::<Str<'de>>()?),
                "pid" => pid = Some(m.next_value()?),
                "tid" => tid = Some(m.next_value()?),
                "uid" => uid = Some(m.next_value()?),
                "exe" => exe = Some(m.next_value::<Exe<'de>>()?),
                "auid" | "ses" => drop(m.next_value::<u32>()?),
                "peer" => drop(m.next_value::<Peer<'de>>()?),
                "ev" => ev = Some(m.next_value::<Str<'de>>()?.0),
                "fn" => function = m.next_value::<Option<Str<'de>>>()?.map(|s| s.0),
                "rv" => rv = m.next_value::<Option<Str<'de>>>()?.map(|s| s.0),
                "lost" => lost = m.next_value()?,
                "mac" => mac = Some(m.next_value::<Str<'de>>()?),
                _ => m.next_value_seed(Strict { names: &mut *names })?,
            }
            names.push(name);
        }
        fn need<T, E: de::Error>(x: Option<T>, name: &'static str) -> Result<T, E> {
            x.ok_or_else(|| E::missing_field(name))
        }
        // In the order of the members in a record.
        need(v, "v")?;
        need(seq, "seq")?;
        need(prev, "prev")?;
        let ts = need(ts, "ts")?;
        need(host, "host")?;
        let pid = need(pid, "pid")?;
        need(tid, "tid")?;
        need(uid, "uid")?;
        let exe = need(exe, "exe")?;
        let ev = need(ev, "ev")?;
        need(mac, "mac")?;
        Ok(Rec {
            ts,
            pid,
            exe,
            ev,
            function,
            rv,
            lost,
        })
    }
}

/// Any JSON value, read to its end: strings decoded (serde_json refuses a `\u` escape that is
/// not UTF-16 there), and in every object each member name compared with the ones before it.
struct Strict<'s, 'de> {
    names: &'s mut Vec<Cow<'de, str>>,
}

impl<'s, 'de> DeserializeSeed<'de> for Strict<'s, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'s, 'de> Visitor<'de> for Strict<'s, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
        let names = self.names;
        while s
            .next_element_seed(Strict { names: &mut *names })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        let names = self.names;
        let start = names.len();
        while let Some(Str(name)) = m.next_key::<Str<'de>>()? {
            if names[start..].contains(&name) {
                return Err(twice(&name));
            }
            m.next_value_seed(Strict { names: &mut *names })?;
            names.push(name);
        }
        names.truncate(start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::format::chain::{hex_lower, ZERO_MAC_HEX};
    use crate::format::record::Bytes;
    use crate::reader::verify::testchain::{chain, k0, problem, run, sign, Chain};
    use crate::reader::verify::ProblemKind;

    /// Seals `bodies` (each `{...}`, any bytes) as seq 0.. under K_0, as a key holder can.
    fn chain_of_bytes(bodies: &[Vec<u8>]) -> Chain {
        let mut key = k0();
        let mut prev = ZERO_MAC_HEX.to_string();
        let mut lines = Vec::new();
        let mut macs = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            let mut line = format!(r#"{{"v":1,"seq":{i},"prev":"{prev}","#).into_bytes();
            line.extend_from_slice(&b[1..b.len() - 1]);
            prev = hex_lower(&key.mac(&line));
            line.extend_from_slice(format!(r#","mac":"{prev}"}}"#).as_bytes());
            line.push(b'\n');
            key.evolve();
            lines.push(line);
            macs.push(prev.clone());
        }
        Chain {
            lines,
            macs,
            key_next: key,
        }
    }

    /// Each body sealed as seq 2 after two good records: `Some(text)` if verify refuses it as
    /// malformed at line 3 (with `text` in the detail), `None` if the log is intact.
    fn third_line(body: &[u8]) -> Option<String> {
        let bodies = [sign(1).into_bytes(), sign(2).into_bytes(), body.to_vec()];
        let c = chain_of_bytes(&bodies);
        let r = run(&[&c.all()], Some(c.state()));
        let p = r.problem?;
        assert_eq!(
            (p.kind, p.line, p.seq, r.summary.records),
            (ProblemKind::Malformed, 3, Some(2), 2),
            "{}",
            p.detail
        );
        assert!(
            p.detail
                .starts_with("mac verifies but the line is not a valid v1 record"),
            "{}",
            p.detail
        );
        Some(p.detail)
    }

    /// Lines sealed with K_0 that JSON readers read in two ways (jq takes the
    /// last of two members of one name, serde's derive refuses the line, a lone surrogate
    /// makes jq refuse it, bytes that are not UTF-8 are dropped or replaced) are malformed,
    /// wherever they are, also in members the verifier does not use; the same lines without
    /// the ambiguity verify.
    #[test]
    fn lines_that_json_readers_could_read_two_ways_are_malformed() {
        let rec = |extra: &str| sign(1).replace(r#","dur_us":3"#, extra).into_bytes();
        let ok = |extra: &str| {
            let body = rec(extra);
            assert_eq!(
                third_line(&body),
                None,
                "{}",
                String::from_utf8_lossy(&body)
            );
        };
        let refused = |extra: &[u8], why: &str| {
            let mut body = rec("");
            body.pop();
            body.extend_from_slice(extra);
            body.push(b'}');
            let detail = third_line(&body)
                .unwrap_or_else(|| panic!("verified: {}", String::from_utf8_lossy(&body)));
            assert!(detail.contains(why), "{why}: {detail}");
        };

        // A member name twice: members verify reads, members it does not, at any depth, and
        // a name spelled with an escape.
        let twice = "appears twice in one object";
        for dup in [
            r#","slot":1,"slot":2"#,
            r#","key":{"handle":1},"key":{"handle":2}"#,
            r#","out":"returned","out":"withheld""#,
            r#","note":"a","note":"b""#,
            r#","created":[],"created":[{"handle":9}]"#,
            r#","ts":"2026-11-26T03:12:46.000000Z""#,
            r#","rv":"CKR_GENERAL_ERROR""#,
            r#","exe":"/y""#,
            r#","slot":1,"slot":2"#,
            r#","key":{"handle":1,"label":"a","label":"b"}"#,
            r#","created":[{"handle":1},{"handle":2,"id":{"hex":"01","hex":"02"}}]"#,
            r#","template":[{"type":"CKA_LABEL","len":1,"value":"x","len":2}]"#,
        ] {
            refused(dup.as_bytes(), twice);
        }
        // The same names in different objects are not duplicates.
        ok(r#","key":{"handle":1,"label":"a"},"key2":{"handle":1,"label":"a"},"slot":1"#);
        ok(r#","created":[{"handle":1,"id":{"hex":"01"}},{"handle":2,"id":{"hex":"01"}}]"#);

        // A \u escape that is not UTF-16: lone surrogates, in values and in names; a pair is
        // one character and verifies.
        for lone in [
            r#","note":"\ud800""#,
            r#","note":"\udc00x""#,
            r#","note":"\ud800\u0041""#,
            r#","note":"\udbff\udbff""#,
            r#","\ud800":1"#,
            r#","key":{"handle":1,"label":"\udfff"}"#,
            r#","template":[{"type":"CKA_LABEL","len":1,"value":"\ud83d"}]"#,
            r#","dur_us":3,"x":["\ud800"]"#,
        ] {
            refused(lone.as_bytes(), "is not UTF-16 (a lone surrogate)");
        }
        ok(r#","note":"\ud83d\ude00 \u00e9 \u0000""#);

        // Bytes that are not UTF-8, in members verify does not read: a stray byte, an
        // overlong encoding, an encoded surrogate, a truncated sequence, in a name.
        for bad in [
            &b",\"note\":\"\xff\""[..],
            b",\"note\":\"\xc0\x80\"",
            b",\"note\":\"\xed\xa0\x80\"",
            b",\"note\":\"\xe2\x82\"",
            b",\"n\xffte\":1",
            b",\"key\":{\"handle\":1,\"label\":\"\xfe\"}",
        ] {
            refused(bad, "not UTF-8");
        }
        ok(",\"note\":\"\u{e9}\u{1f600}\"");

        // The client and the login id: numbers, and the peer's exe in its one spelling.
        ok(
            r#","auid":1000,"ses":3,"peer":{"pid":7,"uid":1001,"gid":1001,"exe":"/usr/bin/x","auid":1000,"session":3}"#,
        );
        ok(r#","peer":{"pid":7,"uid":1001,"gid":1001,"exe":{"hex":"2fff"}}"#);
        refused(
            br#","peer":{"pid":7,"uid":1001,"gid":1001,"exe":{"hex":"2f78"}}"#,
            "holds UTF-8",
        );
        refused(br#","peer":{"pid":7,"uid":1001}"#, "missing field `gid`");
        refused(
            br#","peer":{"pid":7,"uid":1001,"gid":1,"uid":2}"#,
            "duplicate field",
        );
        refused(br#","peer":{"pid":"7","uid":1001,"gid":1}"#, "invalid type");
        refused(br#","auid":-1"#, "invalid value");
    }

    /// `exe` is text, or `{"hex": …}` for a path that is not UTF-8; the two
    /// paths that `display()` made alike are two processes in the summary. Hex that is not
    /// the canonical form of a path that is not UTF-8 is malformed.
    #[test]
    fn exe_in_hex_is_read_losslessly_and_only_in_its_one_form() {
        let with_exe = |pid: u32, exe: &str| {
            sign(pid)
                .replace(r#""exe":"/x""#, &format!(r#""exe":{exe}"#))
                .into_bytes()
        };
        let bodies = [
            with_exe(1, r#"{"hex":"2f746d702f61ff"}"#),
            with_exe(1, r#"{"hex":"2f746d702f61fe"}"#),
            with_exe(1, r#""/tmp/a""#),
            with_exe(1, r#"{"hex":"2f746d702f61ff"}"#),
        ];
        let c = chain_of_bytes(&bodies);
        let r = run(&[&c.all()], Some(c.state()));
        assert!(r.intact, "{:?}", r.problem);
        let exes: Vec<(Bytes, u64)> = r
            .summary
            .processes
            .iter()
            .map(|p| (p.exe.clone(), p.records))
            .collect();
        let hex = |h: &str| Bytes::Hex(h.into());
        assert_eq!(
            exes,
            vec![
                (Bytes::Text("/tmp/a".into()), 1),
                (hex("2f746d702f61fe"), 1),
                (hex("2f746d702f61ff"), 2),
            ]
        );
        assert_eq!(r.summary.process_count, 3);
        let j = serde_json::to_value(&r.summary.processes).unwrap();
        assert_eq!(j[1]["exe"]["hex"], "2f746d702f61fe");

        for (exe, why) in [
            (r#"{"hex":"2f746d702f61"}"#, "holds UTF-8"),
            (r#"{"hex":"2F746D702F61FF"}"#, "not lowercase hex"),
            (r#"{"hex":"2f7"}"#, "not lowercase hex"),
            (r#"{"hex":"+f"}"#, "not lowercase hex"),
            (r#"{"hex":"ff","x":1}"#, "unknown field"),
            (r#"{"hex":"ff","hex":"fe"}"#, "twice"),
            (r#"{}"#, "missing field `hex`"),
            (r#"["ff"]"#, "invalid type"),
        ] {
            let detail = third_line(&with_exe(1, exe)).unwrap_or_else(|| panic!("{exe}"));
            assert!(detail.contains(why), "{exe}: {detail}");
        }
    }

    #[test]
    fn valid_mac_but_not_a_record_is_malformed() {
        let c = chain(&[r#"{"ev":"intent"}"#.to_string()]);
        let p = problem(&run(&[&c.all()], None)).clone();
        assert_eq!((p.kind, p.seq), (ProblemKind::Malformed, Some(0)));
        assert!(p.detail.contains("ts"), "{}", p.detail);
    }
}
