/*
 * workflow.h: the session both C clients run, whatever way they got the function list.
 *
 * Define CLIENT_NAME (the program's name, for messages) before including this file, then
 * call run_workflow() with the table from C_GetFunctionList. It runs: C_Initialize,
 * C_GetInfo, C_GetSlotList, C_OpenSession on the first slot with a token, C_Login (user),
 * C_GenerateRandom (16 bytes), C_Logout, C_CloseSession, C_Finalize. Every call prints
 * "C_Name rv=0x..."; run_workflow returns 0 only if every call returned CKR_OK.
 *
 * Needs mini_pkcs11.h (or another PKCS#11 header) included first.
 */
#ifndef P11AUDIT_TESTS_WORKFLOW_H
#define P11AUDIT_TESTS_WORKFLOW_H

#ifndef CLIENT_NAME
#error "define CLIENT_NAME before including workflow.h"
#endif

#include <stdio.h>
#include <string.h>

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
            fprintf(stderr, CLIENT_NAME ": no slot with a token\n");
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

/*
 * Checks the table C_GetFunctionList returned (`rv`, `f`) and runs the session with it.
 * Returns 0 on success, 1 after printing why not.
 */
static int run_workflow(CK_RV rv, CK_FUNCTION_LIST *f, const char *pin)
{
    if (!step("C_GetFunctionList", rv))
        return 1;
    if (f == NULL) {
        fprintf(stderr, CLIENT_NAME ": C_GetFunctionList returned a NULL table\n");
        return 1;
    }
    printf("function list version: %u.%u\n", f->version.major, f->version.minor);

    if (run(f, pin) != 0) {
        fprintf(stderr, CLIENT_NAME ": FAILED\n");
        return 1;
    }
    return 0;
}

#endif
