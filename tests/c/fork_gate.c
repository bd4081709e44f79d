/*
 * fork_gate.c: a PKCS#11 module that forwards every call to the module named
 * by $FORK_GATE_MODULE and keeps fork() out of its signing functions.
 *
 * tests/fork.rs forks while another thread of the parent signs in a loop, to
 * check that p11audit's own locks survive fork. SoftHSM 2.6.1 itself does not:
 * with library.reset_on_fork = true a forked child's C_Initialize destroys
 * every object of the SoftHSM instance it inherited, including the signing
 * operation the other thread was in the middle of, and about one fork in a few
 * thousand then dies in a double free inside SoftHSM. This module holds a lock
 * during C_SignInit, C_Sign, C_SignUpdate and C_SignFinal and takes it in a
 * pthread_atfork handler, so fork happens between those calls only: anywhere
 * in p11audit still, which is what the test is about.
 *
 * Build: cc -shared -fPIC -Itests/c tests/c/fork_gate.c -o fork_gate -ldl -lpthread
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mini_pkcs11.h"

#define CKR_GENERAL_ERROR 0x00000005UL

typedef CK_RV (*sign_init_fn)(CK_SESSION_HANDLE, void *, CK_ULONG);
typedef CK_RV (*sign_fn)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG *);
typedef CK_RV (*sign_update_fn)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG);
typedef CK_RV (*sign_final_fn)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG *);

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static CK_RV load_rv = CKR_GENERAL_ERROR;
static CK_FUNCTION_LIST gate;
/* The real module's signing functions (mini_pkcs11.h declares them as void *). */
static sign_init_fn real_sign_init;
static sign_fn real_sign;
static sign_update_fn real_sign_update;
static sign_final_fn real_sign_final;

static void gate_close(void) { pthread_mutex_lock(&gate_lock); }
static void gate_open(void) { pthread_mutex_unlock(&gate_lock); }

static CK_RV gated_sign_init(CK_SESSION_HANDLE s, void *mechanism, CK_ULONG key)
{
    CK_RV rv;
    gate_close();
    rv = real_sign_init(s, mechanism, key);
    gate_open();
    return rv;
}

static CK_RV gated_sign(CK_SESSION_HANDLE s, CK_BYTE *data, CK_ULONG len, CK_BYTE *sig,
                        CK_ULONG *sig_len)
{
    CK_RV rv;
    gate_close();
    rv = real_sign(s, data, len, sig, sig_len);
    gate_open();
    return rv;
}

static CK_RV gated_sign_update(CK_SESSION_HANDLE s, CK_BYTE *part, CK_ULONG len)
{
    CK_RV rv;
    gate_close();
    rv = real_sign_update(s, part, len);
    gate_open();
    return rv;
}

static CK_RV gated_sign_final(CK_SESSION_HANDLE s, CK_BYTE *sig, CK_ULONG *sig_len)
{
    CK_RV rv;
    gate_close();
    rv = real_sign_final(s, sig, sig_len);
    gate_open();
    return rv;
}

static CK_RV gate_get_function_list(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (list == NULL)
        return 0x00000007UL; /* CKR_ARGUMENTS_BAD */
    *list = &gate;
    return CKR_OK;
}

static void load(void)
{
    const char *path = getenv("FORK_GATE_MODULE");
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST *real = NULL;
    sign_init_fn sign_init = gated_sign_init;
    sign_fn sign = gated_sign;
    sign_update_fn sign_update = gated_sign_update;
    sign_final_fn sign_final = gated_sign_final;
    void *module;

    if (path == NULL) {
        fprintf(stderr, "fork_gate: FORK_GATE_MODULE is not set\n");
        return;
    }
    module = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (module == NULL) {
        fprintf(stderr, "fork_gate: dlopen %s: %s\n", path, dlerror());
        return;
    }
    *(void **)&get = dlsym(module, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK || real == NULL) {
        fprintf(stderr, "fork_gate: no function list from %s\n", path);
        return;
    }
    gate = *real;
    memcpy(&real_sign_init, &real->C_SignInit, sizeof real_sign_init);
    memcpy(&real_sign, &real->C_Sign, sizeof real_sign);
    memcpy(&real_sign_update, &real->C_SignUpdate, sizeof real_sign_update);
    memcpy(&real_sign_final, &real->C_SignFinal, sizeof real_sign_final);
    gate.C_GetFunctionList = gate_get_function_list;
    memcpy(&gate.C_SignInit, &sign_init, sizeof sign_init);
    memcpy(&gate.C_Sign, &sign, sizeof sign);
    memcpy(&gate.C_SignUpdate, &sign_update, sizeof sign_update);
    memcpy(&gate.C_SignFinal, &sign_final, sizeof sign_final);
    if (pthread_atfork(gate_close, gate_open, gate_open) != 0) {
        fprintf(stderr, "fork_gate: pthread_atfork failed\n");
        return;
    }
    load_rv = CKR_OK;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    pthread_once(&load_once, load);
    if (load_rv != CKR_OK)
        return load_rv;
    return gate_get_function_list(list);
}
