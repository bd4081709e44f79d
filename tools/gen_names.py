#!/usr/bin/env python3
"""Generate src/format/names.rs from the cryptoki-sys 0.5.0 bindings.

Usage:
    tools/gen_names.py PATH/TO/cryptoki-sys-0.5.0/src/bindings/x86_64-unknown-linux-gnu.rs \
        > src/format/names.rs
    rustfmt --edition 2021 src/format/names.rs

The bindings are bindgen output of the PKCS#11 3.2 header vendored in cryptoki-sys
(vendor/pkcs11.h, latchset/pkcs11-headers). Every constant we want looks like

    pub const CKR_OK: CK_RV = 0;

All values in 0.5.0 are plain decimal literals; hex literals, `_` separators, integer
suffixes and simple constant expressions (`|`, `+`, `-`, `<<`, `&`, references to
earlier constants, `as` casts) are accepted too, and anything else is a hard error
rather than a silently wrong table.

Families are selected by name prefix AND Rust type (see FAMILIES). The type check
keeps out same-prefix constants of other enumerations; CK_ULONG is also accepted in
case a later bindgen run loses the typedef.

Exclusions (not members of the enumerations):
  * every *_VENDOR_DEFINED constant: it is the start of the vendor range, not a value;
  * CKS_LAST_VALIDATION_OK: typed CK_STATE in the header but it is a validation
    result (CKA_VALIDATION_*), not a session state; state_name covers only
    CKS_RO_PUBLIC_SESSION .. CKS_RW_SO_FUNCTIONS;
  * for mgf_name, only CKG_MGF1_*: the other CKG_* (CKG_GENERATE, ...) are
    CK_GENERATOR_FUNCTION values for AEAD IV generation and share the values 1..4.
  * CKF_* flags (e.g. CKF_ARRAY_ATTRIBUTE) are never selected; attributes that
    include the flag in their value (CKA_WRAP_TEMPLATE = CKF_ARRAY_ATTRIBUTE|0x211)
    are ordinary attribute types and are kept.

Alias rule (several names sharing one value), applied per family:
  1. Drop names in DEPRECATED, which mirrors the `#ifdef PKCS11_DEPRECATED` blocks of
     the vendored 3.2 header (CKA_ECDSA_PARAMS, CKK_ECDSA, CKK_CAST5, CKM_CAST5_*,
     CKM_PBE_*_CAST5_CBC, CKM_ECDSA_KEY_PAIR_GEN, CKM_DSA_PROBABLISTIC_PARAMETER_GEN),
     unless that would leave no name for the value.
  2. If several names remain, take the one that appears LAST in the bindings.
     This only decides ties between non-deprecated spellings; in 0.5.0 those are
     CKA_SUBPRIME_BITS/CKA_SUB_PRIME_BITS -> CKA_SUB_PRIME_BITS and
     CKM_SHA3_*/SHAKE_*_KEY_DERIVATION/_KEY_DERIVE -> *_KEY_DERIVE (the spelling of the
     OASIS headers). Note that step 1 matters: in this file the deprecated aliases
     come after the current names, so "last wins" alone would pick them.
Every alias decision is reported on stderr so a regeneration against new bindings
shows any new tie.
"""

import ast
import re
import sys

SOURCE_DESC = "cryptoki-sys 0.5.0"

# (function name, prefix, accepted Rust types, doc line)
FAMILIES = [
    ("rv_name", "CKR_", {"CK_RV"}, "a `CK_RV` return value (`CKR_*`)"),
    ("mechanism_name", "CKM_", {"CK_MECHANISM_TYPE"}, "a `CK_MECHANISM_TYPE` (`CKM_*`)"),
    ("attribute_name", "CKA_", {"CK_ATTRIBUTE_TYPE"}, "a `CK_ATTRIBUTE_TYPE` (`CKA_*`)"),
    ("object_class_name", "CKO_", {"CK_OBJECT_CLASS"}, "a `CK_OBJECT_CLASS` (`CKO_*`)"),
    ("key_type_name", "CKK_", {"CK_KEY_TYPE"}, "a `CK_KEY_TYPE` (`CKK_*`)"),
    ("user_type_name", "CKU_", {"CK_USER_TYPE"}, "a `CK_USER_TYPE` (`CKU_*`)"),
    (
        "mgf_name",
        "CKG_MGF1_",
        # The header types the MGF values as CK_GENERATOR_FUNCTION.
        {"CK_RSA_PKCS_MGF_TYPE", "CK_GENERATOR_FUNCTION"},
        "a `CK_RSA_PKCS_MGF_TYPE` (`CKG_MGF1_*`)",
    ),
    (
        "certificate_type_name",
        "CKC_",
        {"CK_CERTIFICATE_TYPE"},
        "a `CK_CERTIFICATE_TYPE` (`CKC_*`)",
    ),
    ("state_name", "CKS_", {"CK_STATE"}, "a session `CK_STATE` (`CKS_*`)"),
]
FALLBACK_TYPES = {"CK_ULONG"}

EXCLUDE = {
    "CKS_LAST_VALIDATION_OK",
}

DEPRECATED = {
    "CKA_ECDSA_PARAMS",
    "CKK_ECDSA",
    "CKK_CAST5",
    "CKM_CAST5_KEY_GEN",
    "CKM_CAST5_ECB",
    "CKM_CAST5_CBC",
    "CKM_CAST5_MAC",
    "CKM_CAST5_MAC_GENERAL",
    "CKM_CAST5_CBC_PAD",
    "CKM_PBE_MD5_CAST5_CBC",
    "CKM_PBE_SHA1_CAST5_CBC",
    "CKM_ECDSA_KEY_PAIR_GEN",
    "CKM_DSA_PROBABLISTIC_PARAMETER_GEN",
}

CONST_RE = re.compile(
    r"^\s*pub\s+const\s+([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([A-Za-z_][A-Za-z0-9_:]*)\s*=\s*([^;]+);",
    re.M,
)
INT_RE = re.compile(r"\b(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)(?:_?(?:[ui](?:8|16|32|64|128|size)))?\b")
U64_MAX = (1 << 64) - 1


def die(msg):
    print("gen_names.py: error: " + msg, file=sys.stderr)
    sys.exit(1)


def eval_value(name, expr, known):
    """Evaluate a bindgen constant initializer to a Python int."""
    text = re.sub(r"\bas\s+[A-Za-z_][A-Za-z0-9_:]*", "", expr).strip()

    def lit(m):
        digits = m.group(1).replace("_", "")
        return str(int(digits, 0))

    text = INT_RE.sub(lit, text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        die("cannot parse value of {}: {!r}".format(name, expr))

    ops = {
        ast.BitOr: lambda a, b: a | b,
        ast.BitAnd: lambda a, b: a & b,
        ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b,
        ast.LShift: lambda a, b: a << b,
    }

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        die("unsupported value form for {}: {!r}".format(name, expr))

    value = ev(tree)
    if not 0 <= value <= U64_MAX:
        die("value of {} out of u64 range: {}".format(name, value))
    return value


def parse(path):
    with open(path, encoding="utf-8") as f:
        src = f.read()
    consts = []  # (index, name, type, value)
    known = {}
    for i, m in enumerate(CONST_RE.finditer(src)):
        name, ty, expr = m.group(1), m.group(2).split("::")[-1], m.group(3)
        if not name.startswith("CK"):
            continue
        value = eval_value(name, expr, known)
        known[name] = value
        consts.append((i, name, ty, value))
    if not consts:
        die("no `pub const CK*` lines found in " + path)
    return consts


def select(consts, prefix, types):
    """Return {value: [(index, name), ...]} for one family."""
    by_value = {}
    for index, name, ty, value in consts:
        if not name.startswith(prefix):
            continue
        if name.endswith("_VENDOR_DEFINED") or name in EXCLUDE:
            continue
        if ty not in types and ty not in FALLBACK_TYPES:
            print(
                "gen_names.py: note: skipping {} (type {}, not {})".format(
                    name, ty, "/".join(sorted(types))
                ),
                file=sys.stderr,
            )
            continue
        by_value.setdefault(value, []).append((index, name))
    return by_value


def canonical(value, candidates):
    current = [c for c in candidates if c[1] not in DEPRECATED] or candidates
    chosen = max(current)[1]  # last in the bindings wins among the rest
    if len(candidates) > 1:
        others = ", ".join(n for _, n in candidates if n != chosen)
        how = "not deprecated" if len(current) == 1 else "last in file"
        print(
            "gen_names.py: alias 0x{:X}: {} over {} ({})".format(value, chosen, others, how),
            file=sys.stderr,
        )
    return chosen


def rust_hex(value):
    digits = "{:X}".format(value)
    width = max(8, (len(digits) + 3) // 4 * 4)
    digits = digits.rjust(width, "0")
    groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    return "0x" + "_".join(groups)


def generate(consts):
    out = []
    w = out.append
    w("//! Generated by tools/gen_names.py from {}; must not be edited by hand.".format(SOURCE_DESC))
    w("//!")
    w("//! To regenerate, run the script on the cryptoki-sys bindings and rustfmt the result.")
    w("//!")
    w("//! Each function maps a numeric value of one PKCS#11 enumeration to its canonical")
    w("//! constant name, or `None` for values the header does not define (including vendor")
    w("//! values). Where several names share a value, deprecated aliases lose; remaining ties")
    w("//! go to the name defined last (see the script for the exact rule).")
    counts = []
    for fn_name, prefix, types, doc in FAMILIES:
        by_value = select(consts, prefix, types)
        if not by_value:
            die("family {} ({}) is empty".format(fn_name, prefix))
        counts.append((fn_name, len(by_value)))
        w("")
        w("/// Canonical name of {}, or `None` if unknown.".format(doc))
        w("#[must_use]")
        w("pub fn {}(v: u64) -> Option<&'static str> {{".format(fn_name))
        w("    match v {")
        for value in sorted(by_value):
            w('        {} => Some("{}"),'.format(rust_hex(value), canonical(value, by_value[value])))
        w("        _ => None,")
        w("    }")
        w("}")
    w(TESTS)
    for fn_name, n in counts:
        print("gen_names.py: {}: {} names".format(fn_name, n), file=sys.stderr)
    return "\n".join(out) + "\n"


TESTS = """
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(rv_name(0), Some("CKR_OK"));
        assert_eq!(rv_name(0xa0), Some("CKR_PIN_INCORRECT"));
        assert_eq!(mechanism_name(0x1041), Some("CKM_ECDSA"));
        assert_eq!(mechanism_name(0x1040), Some("CKM_EC_KEY_PAIR_GEN"));
        assert_eq!(attribute_name(3), Some("CKA_LABEL"));
        assert_eq!(attribute_name(0x4000_0211), Some("CKA_WRAP_TEMPLATE"));
        assert_eq!(object_class_name(3), Some("CKO_PRIVATE_KEY"));
        assert_eq!(key_type_name(0x1f), Some("CKK_AES"));
        assert_eq!(user_type_name(0), Some("CKU_SO"));
        assert_eq!(mgf_name(2), Some("CKG_MGF1_SHA256"));
        assert_eq!(certificate_type_name(0), Some("CKC_X_509"));
        assert_eq!(state_name(4), Some("CKS_RW_SO_FUNCTIONS"));
    }

    #[test]
    fn deprecated_aliases_lose() {
        assert_eq!(key_type_name(3), Some("CKK_EC"));
        assert_eq!(key_type_name(0x18), Some("CKK_CAST128"));
        assert_eq!(attribute_name(0x180), Some("CKA_EC_PARAMS"));
        assert_eq!(mechanism_name(0x320), Some("CKM_CAST128_KEY_GEN"));
        assert_eq!(
            mechanism_name(0x2003),
            Some("CKM_DSA_PROBABILISTIC_PARAMETER_GEN")
        );
    }

    #[test]
    fn unknown_values() {
        assert_eq!(rv_name(0x7fff_ffff), None);
        assert_eq!(mechanism_name(u64::MAX), None);
        assert_eq!(attribute_name(0x8000_0000), None); // CKA_VENDOR_DEFINED
        assert_eq!(attribute_name(0x4000_0000), None); // CKF_ARRAY_ATTRIBUTE alone
        assert_eq!(object_class_name(0x8000_0000), None);
        assert_eq!(user_type_name(3), None);
        assert_eq!(mgf_name(0), None);
        assert_eq!(certificate_type_name(3), None);
        assert_eq!(state_name(5), None);
    }
}"""


def main():
    if len(sys.argv) != 2:
        die("usage: gen_names.py BINDINGS.rs > src/format/names.rs")
    sys.stdout.write(generate(parse(sys.argv[1])))


if __name__ == "__main__":
    main()
