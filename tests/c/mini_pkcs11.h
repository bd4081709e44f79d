/*
 * mini_pkcs11.h: the small part of the PKCS#11 2.40 ABI that p11audit's C test
 * programs need, written by hand (nothing vendored).
 *
 * Layout follows the Linux/Unix convention of the OASIS headers: CK_ULONG is
 * unsigned long, structures are not packed, function pointers are plain C
 * pointers. CK_INFO and CK_FUNCTION_LIST are checked against the sizes in
 * cryptoki-sys 0.5 (x86_64-unknown-linux-gnu: 88 and 552 bytes).
 *
 * Function pointers the tests never call are `void *`: each slot is still
 * pointer-sized and in the exact PKCS#11 2.40 order.
 */
#ifndef P11AUDIT_TESTS_MINI_PKCS11_H
#define P11AUDIT_TESTS_MINI_PKCS11_H

#include <stddef.h>

typedef unsigned char CK_BYTE;
typedef CK_BYTE CK_BBOOL;
typedef CK_BYTE CK_UTF8CHAR;
typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef CK_ULONG CK_FLAGS;
typedef CK_ULONG CK_SLOT_ID;
typedef CK_ULONG CK_SESSION_HANDLE;
typedef CK_ULONG CK_USER_TYPE;
typedef void *CK_VOID_PTR;
typedef CK_RV (*CK_NOTIFY)(CK_SESSION_HANDLE, CK_ULONG, CK_VOID_PTR);

#define CK_TRUE 1
#define CK_FALSE 0
#define CKR_OK 0x00000000UL
#define CKU_USER 1UL
#define CKF_RW_SESSION 0x00000002UL
#define CKF_SERIAL_SESSION 0x00000004UL

typedef struct CK_VERSION {
    CK_BYTE major;
    CK_BYTE minor;
} CK_VERSION;

typedef struct CK_INFO {
    CK_VERSION cryptokiVersion;
    CK_UTF8CHAR manufacturerID[32];
    CK_FLAGS flags;
    CK_UTF8CHAR libraryDescription[32];
    CK_VERSION libraryVersion;
} CK_INFO;

struct CK_FUNCTION_LIST;
typedef struct CK_FUNCTION_LIST CK_FUNCTION_LIST;
typedef CK_FUNCTION_LIST *CK_FUNCTION_LIST_PTR;
typedef CK_FUNCTION_LIST_PTR *CK_FUNCTION_LIST_PTR_PTR;
typedef CK_RV (*CK_C_GetFunctionList)(CK_FUNCTION_LIST_PTR_PTR);

struct CK_FUNCTION_LIST {
    CK_VERSION version;
    /* General-purpose */
    CK_RV (*C_Initialize)(CK_VOID_PTR pInitArgs);
    CK_RV (*C_Finalize)(CK_VOID_PTR pReserved);
    CK_RV (*C_GetInfo)(CK_INFO *pInfo);
    CK_C_GetFunctionList C_GetFunctionList;
    /* Slot and token management */
    CK_RV (*C_GetSlotList)(CK_BBOOL tokenPresent, CK_SLOT_ID *pSlotList, CK_ULONG *pulCount);
    void *C_GetSlotInfo;
    void *C_GetTokenInfo;
    void *C_GetMechanismList;
    void *C_GetMechanismInfo;
    void *C_InitToken;
    void *C_InitPIN;
    void *C_SetPIN;
    /* Session management */
    CK_RV (*C_OpenSession)(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication,
                           CK_NOTIFY Notify, CK_SESSION_HANDLE *phSession);
    CK_RV (*C_CloseSession)(CK_SESSION_HANDLE hSession);
    void *C_CloseAllSessions;
    void *C_GetSessionInfo;
    void *C_GetOperationState;
    void *C_SetOperationState;
    CK_RV (*C_Login)(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType,
                     CK_UTF8CHAR *pPin, CK_ULONG ulPinLen);
    CK_RV (*C_Logout)(CK_SESSION_HANDLE hSession);
    /* Object management */
    void *C_CreateObject;
    void *C_CopyObject;
    void *C_DestroyObject;
    void *C_GetObjectSize;
    void *C_GetAttributeValue;
    void *C_SetAttributeValue;
    void *C_FindObjectsInit;
    void *C_FindObjects;
    void *C_FindObjectsFinal;
    /* Encryption */
    void *C_EncryptInit;
    void *C_Encrypt;
    void *C_EncryptUpdate;
    void *C_EncryptFinal;
    /* Decryption */
    void *C_DecryptInit;
    void *C_Decrypt;
    void *C_DecryptUpdate;
    void *C_DecryptFinal;
    /* Message digesting */
    void *C_DigestInit;
    void *C_Digest;
    void *C_DigestUpdate;
    void *C_DigestKey;
    void *C_DigestFinal;
    /* Signing and MACing */
    void *C_SignInit;
    void *C_Sign;
    void *C_SignUpdate;
    void *C_SignFinal;
    void *C_SignRecoverInit;
    void *C_SignRecover;
    /* Verifying signatures and MACs */
    void *C_VerifyInit;
    void *C_Verify;
    void *C_VerifyUpdate;
    void *C_VerifyFinal;
    void *C_VerifyRecoverInit;
    void *C_VerifyRecover;
    /* Dual-function cryptographic operations */
    void *C_DigestEncryptUpdate;
    void *C_DecryptDigestUpdate;
    void *C_SignEncryptUpdate;
    void *C_DecryptVerifyUpdate;
    /* Key management */
    void *C_GenerateKey;
    void *C_GenerateKeyPair;
    void *C_WrapKey;
    void *C_UnwrapKey;
    void *C_DeriveKey;
    /* Random number generation */
    void *C_SeedRandom;
    CK_RV (*C_GenerateRandom)(CK_SESSION_HANDLE hSession, CK_BYTE *pRandomData,
                              CK_ULONG ulRandomLen);
    /* Parallel function management (legacy) */
    void *C_GetFunctionStatus;
    void *C_CancelFunction;
    /* Slot events */
    void *C_WaitForSlotEvent;
};

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && defined(__x86_64__) && defined(__LP64__)
/* Same figures as cryptoki-sys' x86_64-unknown-linux-gnu bindings. */
_Static_assert(sizeof(CK_INFO) == 88, "CK_INFO layout");
_Static_assert(offsetof(CK_INFO, flags) == 40, "CK_INFO.flags offset");
_Static_assert(offsetof(CK_INFO, libraryVersion) == 80, "CK_INFO.libraryVersion offset");
_Static_assert(sizeof(CK_FUNCTION_LIST) == 8 + 68 * 8, "CK_FUNCTION_LIST has 68 slots");
_Static_assert(offsetof(CK_FUNCTION_LIST, C_GenerateRandom) == 8 + 64 * 8,
               "C_GenerateRandom is slot 65");
_Static_assert(offsetof(CK_FUNCTION_LIST, C_WaitForSlotEvent) == 8 + 67 * 8,
               "C_WaitForSlotEvent is the last slot");
#endif

#endif /* P11AUDIT_TESTS_MINI_PKCS11_H */
