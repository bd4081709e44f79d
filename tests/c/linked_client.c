/*
 * linked_client PIN
 *
 * The session of workflow.h, like dlopen_client, but the program is linked
 * directly against libp11audit.so and calls its exported C_GetFunctionList
 * symbol (no dlopen):
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

#include "mini_pkcs11.h"
#define P11AUDIT_HAVE_PKCS11_H 1 /* mini_pkcs11.h provides the types */
#include "p11audit.h"
#define CLIENT_NAME "linked_client"
#include "workflow.h"

int main(int argc, char **argv)
{
    CK_FUNCTION_LIST *f = NULL;
    CK_RV rv;

    if (argc != 2) {
        fprintf(stderr, "usage: %s PIN\n", argv[0]);
        return 2;
    }

    /* The symbol from the library this program is linked against. */
    rv = C_GetFunctionList(&f);
    if (run_workflow(rv, f, argv[1]) != 0)
        return 1;
    printf("linked_client: OK\n");
    return 0;
}
