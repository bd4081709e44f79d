/*
 * linked_client PIN
 *
 * The same session as dlopen_client, but the program is linked directly
 * against libp11audit.so and calls its exported C_GetFunctionList symbol (no
 * dlopen):
 *
 *   cc -Wall -Wextra -Itests/c -Iinclude tests/c/linked_client.c \
 *      -Ltarget/debug -lp11audit -Wl,-rpath,$PWD/target/debug
 *
 * This puts the shim's exported symbols in the program's global scope, where
 * the real module's own relocations could bind to them: SoftHSM 2.6.1 fills
 * its function table through its exported C_* symbols, so a shim exporting
 * C_Initialize & co. would have SoftHSM call back into the shim, which calls
 * SoftHSM, forever (OpenSC issue 2875). The test harness runs this under a
 * timeout: a hang or a stack overflow is the bug.
 *
 * Prints "C_Name rv=0x..." for each call and exits 0 only if every call
 * returned CKR_OK.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mini_pkcs11.h"
#define P11AUDIT_HAVE_PKCS11_H 1 /* mini_pkcs11.h provides the types */
#include "p11audit.h"

static int failed;

static int step(const char *name, CK_RV rv)
{
    printf("%s rv=0x%lx\n", name, rv);
    fflush(stdout);
    if (rv != CKR_OK) {
        failed = 1;
        return 0;
    }
    return 1;
}

/* Prints a blank-padded, not NUL-terminated PKCS#11 string. */
static void print_padded(const char *what, const CK_UTF8CHAR *s, size_t n)
{
    while (n > 0 && s[n - 1] == ' ')
        n--;
    printf("%s: %.*s\n", what, (int)n, (const char *)s);
}

static int run(CK_FUNCTION_LIST *f, const char *pin)
{
    CK_INFO info;
    CK_SLOT_ID slots[64];
    CK_ULONG nslots = 0;
    CK_SESSION_HANDLE session = 0;
    CK_BYTE random[16];

    if (!step("C_Initialize", f->C_Initialize(NULL)))
        return 1;

    memset(&info, 0, sizeof info);
    if (step("C_GetInfo", f->C_GetInfo(&info))) {
        print_padded("manufacturerID", info.manufacturerID, sizeof info.manufacturerID);
        printf("cryptokiVersion: %u.%u\n", info.cryptokiVersion.major,
               info.cryptokiVersion.minor);
    }

    if (step("C_GetSlotList", f->C_GetSlotList(CK_TRUE, NULL, &nslots))) {
        printf("slots with a token: %lu\n", nslots);
        if (nslots == 0) {
            fprintf(stderr, "linked_client: no slot with a token\n");
            failed = 1;
        } else {
            if (nslots > sizeof slots / sizeof slots[0])
                nslots = sizeof slots / sizeof slots[0];
            /* A second call fills the list (PKCS#11 length-query convention). */
            if (step("C_GetSlotList", f->C_GetSlotList(CK_TRUE, slots, &nslots)) &&
                nslots > 0 &&
                step("C_OpenSession",
                     f->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                                      NULL, &session))) {
                if (step("C_Login", f->C_Login(session, CKU_USER, (CK_UTF8CHAR *)pin,
                                               (CK_ULONG)strlen(pin)))) {
                    step("C_GenerateRandom",
                         f->C_GenerateRandom(session, random, (CK_ULONG)sizeof random));
                    step("C_Logout", f->C_Logout(session));
                }
                step("C_CloseSession", f->C_CloseSession(session));
            }
        }
    }

    step("C_Finalize", f->C_Finalize(NULL));
    return failed;
}

int main(int argc, char **argv)
{
    CK_FUNCTION_LIST *f = NULL;

    if (argc != 2) {
        fprintf(stderr, "usage: %s PIN\n", argv[0]);
        return 2;
    }

    /* The symbol from the library this program is linked against. */
    if (!step("C_GetFunctionList", C_GetFunctionList(&f)))
        return 1;
    if (f == NULL) {
        fprintf(stderr, "linked_client: C_GetFunctionList returned a NULL table\n");
        return 1;
    }
    printf("function list version: %u.%u\n", f->version.major, f->version.minor);

    if (run(f, argv[1]) != 0) {
        fprintf(stderr, "linked_client: FAILED\n");
        return 1;
    }
    printf("linked_client: OK\n");
    return 0;
}
