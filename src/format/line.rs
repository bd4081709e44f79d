//! Sealing a record body into one chained line, and splitting a line back into P_i and mac_i.
//!
//! A line is `{"v":1,"seq":N,"prev":"<64 hex>",` + the body's members + `,"mac":"<64 hex>"}` + `\n`.
//! P_i is everything before the final `,"mac":"`.

use crate::format::chain::{is_mac_hex, push_hex_lower_str, ChainKey};

/// The separator that starts the last member of every line.
pub(crate) const MAC_MARKER: &[u8] = b",\"mac\":\"";

/// Appends the sealed line for `body` (a serialized JSON object with at least one member) to
/// `out` and returns mac_i as lowercase hex. (The writer uses `seal_and_evolve_into`.)
pub fn seal_into(
    out: &mut Vec<u8>,
    key: &ChainKey,
    seq: u64,
    prev_hex: &str,
    body: &str,
) -> String {
    let mut key = key.clone();
    let mut mac = String::with_capacity(64);
    seal_and_evolve_into(out, &mut key, seq, prev_hex, body, &mut mac);
    mac
}

/// `seal_into` for the writer: writes mac_i as lowercase hex into `mac_hex` and evolves `key`
/// to K_{i+1}, sharing the HMAC key setup between the two (`ChainKey::mac_then_evolve`).
pub(crate) fn seal_and_evolve_into(
    out: &mut Vec<u8>,
    key: &mut ChainKey,
    seq: u64,
    prev_hex: &str,
    body: &str,
    mac_hex: &mut String,
) {
    debug_assert!(body.starts_with('{') && body.ends_with('}') && body.len() > 2);
    let start = out.len();
    out.extend_from_slice(b"{\"v\":1,\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(prev_hex.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(&body.as_bytes()[1..body.len() - 1]);
    let mac = key.mac_then_evolve(&out[start..]);
    mac_hex.clear();
    push_hex_lower_str(mac_hex, &mac);
    out.extend_from_slice(MAC_MARKER);
    out.extend_from_slice(mac_hex.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// A line split into its authenticated part and its mac.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SplitLine<'a> {
    /// P_i: the bytes the mac covers.
    pub payload: &'a [u8],
    /// mac_i as written (64 lowercase hex).
    pub mac: &'a str,
}

impl SplitLine<'_> {
    /// Whether the line's mac is the mac of its payload under `key`: the one seal check, for
    /// the verifier and for the writer's recovery alike.
    pub(crate) fn is_sealed_by(&self, key: &ChainKey) -> bool {
        let mut hex = [0u8; 64];
        base16ct::lower::encode_str(&key.mac(self.payload), &mut hex)
            .is_ok_and(|expected| expected == self.mac)
    }
}

/// Splits a line (without its trailing `\n`) into P_i and mac_i. None if the line does not end
/// in a well-formed `,"mac":"<64 lowercase hex>"}`.
pub(crate) fn split_line(line: &[u8]) -> Option<SplitLine<'_>> {
    // `,"mac":"` (8) + 64 hex + `"}` (2)
    const TAIL: usize = 8 + 64 + 2;
    if line.len() < TAIL + 1 || !line.ends_with(b"\"}") {
        return None;
    }
    let marker_at = line.len() - TAIL;
    if &line[marker_at..marker_at + MAC_MARKER.len()] != MAC_MARKER {
        return None;
    }
    let mac = std::str::from_utf8(&line[marker_at + MAC_MARKER.len()..line.len() - 2]).ok()?;
    if !is_mac_hex(mac) {
        return None;
    }
    Some(SplitLine {
        payload: &line[..marker_at],
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chain::hex_lower;
    use crate::format::chain::ZERO_MAC_HEX;

    #[test]
    fn seal_then_split_round_trips_and_mac_covers_payload() {
        let key = ChainKey::from_bytes([1; 32]);
        let mut out = Vec::new();
        let mac = seal_into(
            &mut out,
            &key,
            0,
            ZERO_MAC_HEX,
            r#"{"ts":"x","ev":"start"}"#,
        );
        assert_eq!(*out.last().unwrap(), b'\n');
        let line = &out[..out.len() - 1];
        let split = split_line(line).unwrap();
        assert_eq!(split.mac, mac);
        assert_eq!(hex_lower(&key.mac(split.payload)), mac);
        let text = std::str::from_utf8(line).unwrap();
        assert!(text.starts_with(r#"{"v":1,"seq":0,"prev":"0000"#));
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["ev"], "start");
        assert_eq!(v["mac"], mac.as_str());
    }

    #[test]
    fn split_rejects_malformed_tails() {
        assert!(split_line(b"{}").is_none());
        let key = ChainKey::from_bytes([1; 32]);
        let mut out = Vec::new();
        seal_into(&mut out, &key, 5, ZERO_MAC_HEX, r#"{"a":1}"#);
        let line = out[..out.len() - 1].to_vec();
        let mut upper = line.clone();
        let n = upper.len();
        upper[n - 3] = b'A';
        assert!(split_line(&upper).is_none());
        assert!(split_line(&line[..line.len() - 1]).is_none());
    }
}
