/*
 * setuid_probe MODULE
 *
 * Installed setuid root by tests/setuid.rs and run by an unprivileged user: loads MODULE (the
 * shim) with dlopen, calls C_GetFunctionList and C_Initialize(NULL), and prints what it saw:
 *
 *   AT_SECURE=1 ruid=65534 euid=0
 *   C_GetFunctionList rv=0x0
 *   C_Initialize rv=0x5
 *
 * AT_SECURE tells the test whether the kernel really ran it with privileges (a nosuid mount
 * or no_new_privs would not). Exits 0 whatever C_Initialize returned; 1 if the module cannot
 * be loaded at all.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "mini_pkcs11.h"

int main(int argc, char **argv)
{
    void *module;
    CK_C_GetFunctionList get_function_list;
    CK_FUNCTION_LIST *f = NULL;
    CK_RV rv;

    if (argc != 2) {
        fprintf(stderr, "usage: %s MODULE\n", argv[0]);
        return 2;
    }
    printf("AT_SECURE=%lu ruid=%u euid=%u\n", getauxval(AT_SECURE), (unsigned)getuid(),
           (unsigned)geteuid());
    fflush(stdout);

    module = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (module == NULL) {
        fprintf(stderr, "setuid_probe: dlopen %s: %s\n", argv[1], dlerror());
        return 1;
    }
    *(void **)&get_function_list = dlsym(module, "C_GetFunctionList");
    if (get_function_list == NULL) {
        fprintf(stderr, "setuid_probe: dlsym C_GetFunctionList: %s\n", dlerror());
        return 1;
    }
    rv = get_function_list(&f);
    printf("C_GetFunctionList rv=0x%lx\n", rv);
    if (rv != CKR_OK || f == NULL)
        return 1;
    rv = f->C_Initialize(NULL);
    printf("C_Initialize rv=0x%lx\n", rv);
    return 0;
}
