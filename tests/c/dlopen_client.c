/*
 * dlopen_client MODULE PIN
 *
 * Loads a PKCS#11 module the way applications do (dlopen with RTLD_NOW |
 * RTLD_LOCAL, then dlsym "C_GetFunctionList"), runs the session of workflow.h,
 * then dlcloses the module. Prints "C_Name rv=0x..." for each call and exits 0
 * only if every call returned CKR_OK.
 *
 * Build: cc -Wall -Wextra -Itests/c -Iinclude tests/c/dlopen_client.c -ldl
 */
#include <dlfcn.h>
#include <stdio.h>

#include "mini_pkcs11.h"
#define P11AUDIT_HAVE_PKCS11_H 1 /* mini_pkcs11.h provides the types */
#include "p11audit.h"
#define CLIENT_NAME "dlopen_client"
#include "workflow.h"

int main(int argc, char **argv)
{
    void *module;
    CK_C_GetFunctionList get_function_list;
    CK_FUNCTION_LIST *f = NULL;
    CK_RV rv;

    if (argc != 3) {
        fprintf(stderr, "usage: %s MODULE PIN\n", argv[0]);
        return 2;
    }

    module = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (module == NULL) {
        fprintf(stderr, "dlopen_client: dlopen %s: %s\n", argv[1], dlerror());
        return 1;
    }
    /* POSIX-sanctioned way to turn the object pointer dlsym returns into a function pointer. */
    *(void **)&get_function_list = dlsym(module, "C_GetFunctionList");
    if (get_function_list == NULL) {
        fprintf(stderr, "dlopen_client: dlsym C_GetFunctionList: %s\n", dlerror());
        return 1;
    }

    rv = get_function_list(&f);
    if (run_workflow(rv, f, argv[2]) != 0)
        return 1;
    /* Unload as pkcs11-tool and most applications do after C_Finalize. */
    if (dlclose(module) != 0) {
        fprintf(stderr, "dlopen_client: dlclose: %s\n", dlerror());
        return 1;
    }
    printf("dlopen_client: OK\n");
    return 0;
}
