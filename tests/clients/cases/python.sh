# Python PyKCS11 (Debian package python3-pykcs11), run with /usr/bin/python3: the machine may
# have other Pythons on PATH (pyenv) without PyKCS11.
#
# Client quirks (the same directly against SoftHSM):
# - PyKCS11 1.5.12 (Debian 12) wraps no C_CopyObject. The script calls it through the module's
#   own CK_FUNCTION_LIST with ctypes; dlopen of the same path returns the library PyKCS11 already
#   loaded and initialized, so the copy runs in PyKCS11's session (and, through the shim, is
#   audited like any other call).
# - PyKCS11 asks for every output length first (a C_Sign/C_Encrypt/C_Decrypt with a NULL
#   buffer): each crypto call's outcome says "out":"returned" and counts that length query
#   ("len_queries":1).
# - SoftHSM 2.6 has no CKM_ECDSA_SHA256: the script digests on the token (CKM_SHA256) and signs
#   the digest with CKM_ECDSA.

# The client: MODULE TOKEN_LABEL PIN WRONG_PIN AES_KEY PLAINTEXT OUTDIR. Prints deterministic
# results as JSON; leaves public keys (DER SubjectPublicKeyInfo), signed data and signatures in
# OUTDIR for OpenSSL.
pykcs11_write_client() {
    cat >"$1" <<'PY'
import ctypes, hashlib, json, subprocess, sys
import PyKCS11
from PyKCS11 import *

module, label, pin, wrong_pin, aes_key, plaintext, outdir = sys.argv[1:8]
aes_key, plaintext = aes_key.encode(), plaintext.encode()
res = {}

def w(name, data):
    with open(f"{outdir}/{name}", "wb") as f:
        f.write(bytes(data))

def der(tag, body):
    n = len(body)
    ln = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + ln + body

def der_int(b):
    b = bytes(b).lstrip(b"\0") or b"\0"
    return der(0x02, (b"\0" + b) if b[0] & 0x80 else b)

def copy_object(session, obj, new_label):
    # PyKCS11 1.5.12 has no C_CopyObject: call it through the module's own function list.
    # dlopen of the same path returns the library PyKCS11 already loaded and initialized.
    class Attr(ctypes.Structure):
        _fields_ = [("type", ctypes.c_ulong), ("pValue", ctypes.c_void_p), ("ulValueLen", ctypes.c_ulong)]
    dll = ctypes.CDLL(module)
    fl = ctypes.c_void_p()
    rv = dll.C_GetFunctionList(ctypes.byref(fl))
    assert rv == CKR_OK, rv
    # CK_FUNCTION_LIST: CK_VERSION padded to 8 bytes, then the 2.40 functions in order;
    # C_CopyObject is function number 21 counting from C_Initialize = 0.
    fp = ctypes.c_void_p.from_address(fl.value + 8 + 21 * 8).value
    proto = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                             ctypes.POINTER(Attr), ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong))
    buf = ctypes.create_string_buffer(new_label, len(new_label))
    tmpl = (Attr * 1)(Attr(CKA_LABEL, ctypes.cast(buf, ctypes.c_void_p), len(new_label)))
    new = ctypes.c_ulong()
    rv = proto(fp)(session.session.value(), obj.value(), tmpl, 1, ctypes.byref(new))
    if rv != CKR_OK:
        raise PyKCS11Error(rv)
    return new.value

lib = PyKCS11Lib()
lib.load(module)
slot = [s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == label][0]
s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)

try:
    s.login(wrong_pin)
    res["login_wrong_pin"] = "CKR_OK"
except PyKCS11Error as e:
    res["login_wrong_pin"] = CKR[e.value]
s.login(pin)
res["login"] = "CKR_OK"

# Digest and random.
fixed = b"p11audit fixed input\n"
res["sha256_fixed_input"] = bytes(s.digest(fixed, Mechanism(CKM_SHA256))).hex()
res["sha256_matches_hashlib"] = res["sha256_fixed_input"] == hashlib.sha256(fixed).hexdigest()
r1, r2 = bytes(s.generateRandom(32)), bytes(s.generateRandom(32))
res["random_len"], res["random_differs"] = len(r1), r1 != r2

# EC P-256 key pair, ECDSA over a SHA-256 digest made on the token.
EC_ID, RSA_ID = bytes.fromhex("ec256001"), bytes.fromhex("a5a02048")
p256 = bytes.fromhex("06082a8648ce3d030107")
ec_pub, ec_priv = s.generateKeyPair(
    [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_TOKEN, True), (CKA_VERIFY, True),
     (CKA_EC_PARAMS, p256), (CKA_LABEL, "py-ec"), (CKA_ID, EC_ID)],
    [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_TOKEN, True), (CKA_PRIVATE, True),
     (CKA_SENSITIVE, True), (CKA_SIGN, True), (CKA_LABEL, "py-ec"), (CKA_ID, EC_ID)],
    mecha=MechanismECGENERATEKEYPAIR)
point = bytes(s.getAttributeValue(ec_pub, [CKA_EC_POINT], allAsBinary=True)[0])
res["ec_point_len"] = len(point)
w("ec.pub.der", bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + point[2:])
data = plaintext
digest = bytes(s.digest(data, Mechanism(CKM_SHA256)))
sig = bytes(s.sign(ec_priv, digest, Mechanism(CKM_ECDSA)))
res["ecdsa_sig_len"] = len(sig)
res["ecdsa_verify"] = s.verify(ec_pub, digest, sig, Mechanism(CKM_ECDSA))
res["ecdsa_verify_tampered"] = s.verify(ec_pub, digest, sig[:-1] + bytes([sig[-1] ^ 1]), Mechanism(CKM_ECDSA))
w("ec.digest", digest)
w("ec.sig", der(0x30, der_int(sig[:32]) + der_int(sig[32:])))

# RSA-2048 key pair: PKCS#1 v1.5 and PSS signatures, PKCS#1 v1.5 and OAEP encryption.
rsa_pub, rsa_priv = s.generateKeyPair(
    [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_TOKEN, True), (CKA_VERIFY, True),
     (CKA_ENCRYPT, True), (CKA_MODULUS_BITS, 2048), (CKA_PUBLIC_EXPONENT, (1, 0, 1)),
     (CKA_LABEL, "py-rsa"), (CKA_ID, RSA_ID)],
    [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_TOKEN, True), (CKA_PRIVATE, True),
     (CKA_SENSITIVE, True), (CKA_SIGN, True), (CKA_DECRYPT, True), (CKA_LABEL, "py-rsa"), (CKA_ID, RSA_ID)])
n, e = s.getAttributeValue(rsa_pub, [CKA_MODULUS, CKA_PUBLIC_EXPONENT], allAsBinary=True)
res["rsa_modulus_bits"] = len(bytes(n)) * 8
spki = der(0x30, der(0x30, bytes.fromhex("06092a864886f70d0101010500")) +
           der(0x03, b"\0" + der(0x30, der_int(n) + der_int(e))))
w("rsa.pub.der", spki)
w("data", data)
sig = bytes(s.sign(rsa_priv, data, Mechanism(CKM_SHA256_RSA_PKCS)))
res["rsa_pkcs1_sig_len"] = len(sig)
res["rsa_pkcs1_verify"] = s.verify(rsa_pub, data, sig, Mechanism(CKM_SHA256_RSA_PKCS))
w("rsa.sig", sig)
pss = RSA_PSS_Mechanism(CKM_SHA256_RSA_PKCS_PSS, CKM_SHA256, CKG_MGF1_SHA256, 32)
sig = bytes(s.sign(rsa_priv, data, pss))
res["rsa_pss_verify"] = s.verify(rsa_pub, data, sig, pss)
w("rsa-pss.sig", sig)
ct = bytes(s.encrypt(rsa_pub, plaintext, MechanismRSAPKCS1))
res["rsa_pkcs1_ct_len"] = len(ct)
res["rsa_pkcs1_roundtrip"] = bytes(s.decrypt(rsa_priv, ct, MechanismRSAPKCS1)) == plaintext
oaep = RSAOAEPMechanism(CKM_SHA_1, CKG_MGF1_SHA1)
ct = bytes(s.encrypt(rsa_pub, plaintext, oaep))
res["rsa_oaep_ct_len"] = len(ct)
res["rsa_oaep_roundtrip"] = bytes(s.decrypt(rsa_priv, ct, oaep)) == plaintext
# Encrypted by plain OpenSSL with the exported public key, decrypted on the token.
ct = subprocess.run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", f"{outdir}/rsa.pub.der",
                     "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1"],
                    input=plaintext, capture_output=True, check=True).stdout
res["rsa_oaep_openssl_to_token"] = bytes(s.decrypt(rsa_priv, ct, oaep)) == plaintext

# Find with attributes.
res["find_ec_private_by_label"] = len(s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_LABEL, "py-ec")]))
res["find_by_rsa_id"] = len(s.findObjects([(CKA_ID, RSA_ID)]))
res["find_private_keys"] = len(s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY)]))
label_, id_, sens, extr = s.getAttributeValue(rsa_priv, [CKA_LABEL, CKA_ID, CKA_SENSITIVE, CKA_EXTRACTABLE])
res["rsa_private_attrs"] = {"label": label_, "id": bytes(id_).hex(), "sensitive": bool(sens), "extractable": bool(extr)}

# AES: a generated key, and an imported one whose CBC output plain OpenSSL must reproduce.
aes_gen = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 32),
                         (CKA_TOKEN, True), (CKA_ENCRYPT, True), (CKA_DECRYPT, True), (CKA_LABEL, "py-aes-gen")])
iv = bytes(s.generateRandom(16))
m = Mechanism(CKM_AES_CBC_PAD, iv)
ct = bytes(s.encrypt(aes_gen, plaintext, m))
res["aes_gen_cbc_ct_len"] = len(ct)
res["aes_gen_cbc_roundtrip"] = bytes(s.decrypt(aes_gen, ct, m)) == plaintext
aes_imp = s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_TOKEN, False),
                          (CKA_ENCRYPT, True), (CKA_DECRYPT, True), (CKA_LABEL, "py-aes-imported"),
                          (CKA_VALUE, aes_key)])
iv = bytes(range(16))
ct = bytes(s.encrypt(aes_imp, plaintext, Mechanism(CKM_AES_CBC_PAD, iv)))
res["aes_imported_cbc_ct"] = ct.hex()
res["aes_imported_cbc_matches_openssl"] = ct == subprocess.run(
    ["openssl", "enc", "-aes-256-cbc", "-K", aes_key.hex(), "-iv", iv.hex()],
    input=plaintext, capture_output=True, check=True).stdout
gcm = AES_GCM_Mechanism(bytes(12), b"p11audit aad", 128)
ct = bytes(s.encrypt(aes_imp, plaintext, gcm))
res["aes_imported_gcm_ct"] = ct.hex()
res["aes_imported_gcm_roundtrip"] = bytes(s.decrypt(aes_imp, ct, gcm)) == plaintext

# A data object: create, copy, read the copy, destroy both.
value = b"data object value " + plaintext
obj = s.createObject([(CKA_CLASS, CKO_DATA), (CKA_TOKEN, True), (CKA_PRIVATE, True), (CKA_LABEL, "py-data"),
                      (CKA_APPLICATION, "p11audit-clients"), (CKA_VALUE, value)])
copy = copy_object(s, obj, b"py-data-copy")
found = s.findObjects([(CKA_CLASS, CKO_DATA), (CKA_LABEL, "py-data-copy")])
res["copy_found"] = [h.value() for h in found] == [copy]
res["copy_value_matches"] = bytes(s.getAttributeValue(found[0], [CKA_VALUE], allAsBinary=True)[0]) == value
s.destroyObject(obj)
s.destroyObject(found[0])
res["data_objects_after_destroy"] = len(s.findObjects([(CKA_CLASS, CKO_DATA)]))

s.logout()
s.closeSession()
print(json.dumps(res, indent=1, sort_keys=True))
PY
}

case_python_pykcs11() {
    local mode py=/usr/bin/python3
    "$py" -c 'import PyKCS11' 2>/dev/null || fail "$py has no PyKCS11 (install python3-pykcs11)"
    # Secrets of the case: none may reach the log. AES-256 key: exactly 32 bytes.
    local wrong_pin=Wrong-canary-Py3d aes_key=AES-key-canary-Vb4nXw8qRt2LmZk5Y plaintext=Plain-canary-Hd6fTq
    pykcs11_write_client client.py
    for mode in direct shim; do
        use_token "$mode"
        mkdir -p "$mode/out"
        "$py" client.py "$MODULE" "$TOKEN_LABEL" "$USER_PIN" "$wrong_pin" "$aes_key" "$plaintext" "$mode/out" \
            >"$mode.json"
        # Checked independently with plain OpenSSL against the public keys read from the token.
        local o=$mode/out
        openssl pkey -pubin -inform DER -in "$o/ec.pub.der" -out "$o/ec.pub.pem"
        openssl pkey -pubin -inform DER -in "$o/rsa.pub.der" -out "$o/rsa.pub.pem"
        openssl dgst -sha256 -binary "$o/data" | cmp -s - "$o/ec.digest" || fail "$mode: token SHA-256 differs from OpenSSL's"
        openssl pkeyutl -verify -pubin -inkey "$o/ec.pub.pem" -in "$o/ec.digest" -sigfile "$o/ec.sig" >/dev/null ||
            fail "$mode: the ECDSA signature does not verify with OpenSSL"
        openssl dgst -sha256 -verify "$o/rsa.pub.pem" -signature "$o/rsa.sig" "$o/data" >/dev/null ||
            fail "$mode: the RSA PKCS#1 signature does not verify with OpenSSL"
        openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -verify "$o/rsa.pub.pem" \
            -signature "$o/rsa-pss.sig" "$o/data" >/dev/null || fail "$mode: the RSA-PSS signature does not verify with OpenSSL"
    done
    same_output direct.json shim.json
    # Every check inside the client came out right (same_output only says both runs agree).
    "$py" - direct.json <<'PY' || fail "the client's results are not all as expected"
import json, sys
r = json.load(open(sys.argv[1]))
# Every verdict is true, except the tampered signature's.
bad = [k for k, v in r.items() if (v is False) != (k == "ecdsa_verify_tampered") and isinstance(v, bool)]
want = {"login_wrong_pin": "CKR_PIN_INCORRECT", "login": "CKR_OK", "find_ec_private_by_label": 1,
        "find_by_rsa_id": 2, "find_private_keys": 2, "data_objects_after_destroy": 0, "random_len": 32,
        "rsa_modulus_bits": 2048, "ecdsa_sig_len": 64, "rsa_pkcs1_sig_len": 256}
bad += [k for k, v in want.items() if r[k] != v]
if bad:
    sys.exit(f"unexpected: {bad}")
PY

    # MODE is shim now: LOG and KEY name its audit log.
    log_verifies
    log_has '"ev":"close"' '/python3'
    log_has '"fn":"C_Login"' '"rv":"CKR_PIN_INCORRECT"'
    log_has '"ev":"outcome"' '"fn":"C_GenerateKeyPair"' '"label":"py-ec","id":{"hex":"ec256001"}' '"CKO_PRIVATE_KEY"'
    log_has '"ev":"outcome"' '"fn":"C_GenerateKeyPair"' '"label":"py-rsa","id":{"hex":"a5a02048"}' '"CKO_PRIVATE_KEY"'
    log_has '"ev":"outcome"' '"fn":"C_GenerateKey"' '"created":[{' '"label":"py-aes-gen"'
    log_has '"fn":"C_Sign"' '"CKM_ECDSA"' '"label":"py-ec","id":{"hex":"ec256001"}' '"out":"returned"'
    log_has '"fn":"C_Sign"' '"CKM_SHA256_RSA_PKCS"' '"label":"py-rsa","id":{"hex":"a5a02048"}' '"out":"returned"'
    log_has '"fn":"C_Sign"' '"CKM_SHA256_RSA_PKCS_PSS"' '"salt_len":32' '"label":"py-rsa"' '"out":"returned"'
    log_has '"fn":"C_Decrypt"' '"CKM_RSA_PKCS_OAEP"' '"hash":"CKM_SHA_1"' '"label":"py-rsa"' '"out":"returned"'
    log_has '"fn":"C_Encrypt"' '"CKM_AES_GCM"' '"iv_len":12' '"label":"py-aes-imported"' '"out":"returned"'
    log_has '"fn":"C_Digest"' '"CKM_SHA256"' '"out":"returned"'
    log_has '"fn":"C_GenerateRandom"' '"out_len":32' '"rv":"CKR_OK"'
    log_has '"ev":"outcome"' '"fn":"C_FindObjectsInit"' '{"type":"CKA_LABEL","len":5,"value":"py-ec"}'
    # The imported AES key: its value is type and length only.
    log_has '"ev":"intent"' '"fn":"C_CreateObject"' '"value":"py-aes-imported"' '{"type":"CKA_VALUE","len":32}'
    log_has '"ev":"outcome"' '"fn":"C_CopyObject"' '"key":{' '"label":"py-data"}' '"created":[{' '"label":"py-data-copy"}'
    log_has '"ev":"outcome"' '"fn":"C_DestroyObject"' '"label":"py-data-copy"}' '"rv":"CKR_OK"'
    log_has_no_secret "$USER_PIN" "$SO_PIN" "$wrong_pin" "$aes_key" "$plaintext"
}
register python_pykcs11 "Python PyKCS11: EC/RSA keygen, ECDSA/PKCS#1/PSS checked by OpenSSL, OAEP, find, digest, random, AES CBC/GCM, create/copy/destroy; wrong PIN; no secrets logged"
