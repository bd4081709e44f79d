/*
 * p11audit.h: what libp11audit.so exports.
 *
 * libp11audit.so is a PKCS#11 module. Load it wherever an application takes a
 * PKCS#11 module path (pkcs11-tool --module, OpenSSL's pkcs11 provider, p11-kit,
 * Java's SunPKCS11, ...). It loads the real module named by P11AUDIT_MODULE,
 * forwards every call to it, and writes one HMAC-chained audit record per event
 * to P11AUDIT_LOG. PINs, key bytes and data are never written.
 *
 * Environment (read at C_Initialize):
 *
 *   P11AUDIT_MODULE      required. Path of the real PKCS#11 module, e.g.
 *                        /usr/lib/softhsm/libsofthsm2.so. It is loaded with
 *                        dlopen(RTLD_NOW | RTLD_LOCAL).
 *   P11AUDIT_LOG         required. Path of the audit log (JSON lines, appended).
 *                        Its chain state is kept beside it in
 *                        "$P11AUDIT_LOG.state".
 *   P11AUDIT_KEY_FILE    the chain's initial key, made by `p11audit keygen PATH`
 *                        (64 hex characters, mode 0400). Needed only to start a
 *                        new chain, that is when the log and its state file do
 *                        not exist yet; afterwards the evolved key in the state
 *                        file is used, and the key file should be handed to the
 *                        auditor and removed from the host.
 *   P11AUDIT_ON_FAILURE  "closed" (default) or "open". What a call does when its
 *                        audit record cannot be written: "closed" refuses the
 *                        call (CKR_GENERAL_ERROR, nothing is forwarded that could
 *                        go unrecorded); "open" forwards it anyway and records the
 *                        loss as a gap once the log can be written again.
 *   P11AUDIT_SYNC        "none" (default) or "always". With "always" the log is
 *                        flushed to stable storage (fdatasync) after each write
 *                        that a call waits for; "none" leaves that to the kernel.
 *   P11AUDIT_LOG_MODE    "0600" (default) or "0640": the mode of a new log file.
 *   P11AUDIT_ROTATE_BYTES  a size such as 100M (at least 64K): end the log with
 *                        a "rotate" record and go on in a new file when it would
 *                        pass this size (one chain across the files).
 *   P11AUDIT_CONFIG      a file of NAME=value lines with the settings above,
 *                        for applications that cannot set environment
 *                        variables; variables set in the environment win.
 *
 * When the environment sets none of these, the settings come from
 * /etc/p11audit.conf if it exists (owned by root, not writable by group or
 * others).
 *
 * In setuid and setgid programs (AT_SECURE) the environment is ignored and the
 * settings come only from /etc/p11audit.conf (owned by root, not writable by
 * group or others). See docs/CONFIG.md.
 *
 * Errors: on a bad configuration (a required variable unset, a value out of
 * range, the module or key file unreadable, a log whose state does not match)
 * C_Initialize returns CKR_GENERAL_ERROR and writes exactly one line starting
 * with "p11audit:" to stderr saying what is wrong.
 *
 * Verify a log with:  p11audit verify --key-file KEY LOG...   (or a directory of
 * rotated files); read it with p11audit show / p11audit report.
 * (exit status 0: intact; 1: a problem was found; 2: usage or I/O error).
 *
 * PKCS#11 types: this header needs only CK_RV and the function-list structure.
 *   - If a PKCS#11 header was included before this one (the OASIS pkcs11.h, or
 *     p11-kit's or OpenSC's), it is detected by its include guard; for any other
 *     header, define P11AUDIT_HAVE_PKCS11_H before including this file.
 *   - Define P11AUDIT_INCLUDE_PKCS11_H to have this file #include <pkcs11.h>
 *     (your platform's header must then be on the include path, with whatever
 *     CK_PTR / CK_DECLARE_FUNCTION macros it expects already set).
 *   - Otherwise this file declares the minimum itself: `CK_RV` and incomplete
 *     `struct CK_FUNCTION_LIST`, `struct CK_INTERFACE`, `struct CK_VERSION`.
 *     That is enough to obtain the function list; to call through it you need
 *     the full PKCS#11 definitions.
 */
#ifndef P11AUDIT_H
#define P11AUDIT_H

#if defined(P11AUDIT_INCLUDE_PKCS11_H) && !defined(P11AUDIT_HAVE_PKCS11_H)
#include <pkcs11.h>
#define P11AUDIT_HAVE_PKCS11_H 1
#endif

/* _PKCS11_H_: OASIS/RSA pkcs11.h up to 3.0; _PD_PKCS11_: OASIS 3.1/3.2;
 * PKCS11_H: p11-kit's and OpenSC's pkcs11.h. */
#if !defined(P11AUDIT_HAVE_PKCS11_H) && (defined(_PKCS11_H_) || defined(_PD_PKCS11_) || defined(PKCS11_H))
#define P11AUDIT_HAVE_PKCS11_H 1
#endif

#ifdef __cplusplus
extern "C" {
#endif

#ifdef P11AUDIT_HAVE_PKCS11_H

/* Types come from the PKCS#11 header included above. */
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList);

/*
 * PKCS#11 3.0 entry points. They are exported from p11audit's PKCS#11 3.0
 * support on; until then, look them up with dlsym() and fall back to
 * C_GetFunctionList when they are absent, as PKCS#11 3.x clients already do.
 * Declared only when the included header is 3.x (it has CK_INTERFACE).
 */
#if defined(CRYPTOKI_VERSION_MAJOR) && CRYPTOKI_VERSION_MAJOR >= 3
CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                     CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);
#endif

#else /* !P11AUDIT_HAVE_PKCS11_H */

/*
 * Minimal stand-ins with the PKCS#11 ABI on Unix: CK_ULONG, CK_RV and CK_FLAGS
 * are unsigned long; CK_UTF8CHAR is unsigned char.
 */
#ifndef P11AUDIT_CK_RV_DEFINED
#define P11AUDIT_CK_RV_DEFINED 1
typedef unsigned long CK_RV;
#endif
struct CK_FUNCTION_LIST;
struct CK_INTERFACE;
struct CK_VERSION;

CK_RV C_GetFunctionList(struct CK_FUNCTION_LIST **ppFunctionList);

/*
 * PKCS#11 3.0 entry points. They are exported from p11audit's PKCS#11 3.0
 * support on; until then, look them up with dlsym() and fall back to
 * C_GetFunctionList when they are absent, as PKCS#11 3.x clients already do.
 */
CK_RV C_GetInterfaceList(struct CK_INTERFACE *pInterfacesList, unsigned long *pulCount);
CK_RV C_GetInterface(unsigned char *pInterfaceName, struct CK_VERSION *pVersion,
                     struct CK_INTERFACE **ppInterface, unsigned long flags);

#endif /* P11AUDIT_HAVE_PKCS11_H */

#ifdef __cplusplus
}
#endif

#endif /* P11AUDIT_H */
