/*
 * finalize_gate.c: a PKCS#11 module that forwards every call to the module
 * named by $FINALIZE_GATE_MODULE and serializes C_Finalize with C_GetInfo and
 * C_GenerateRandom.
 *
 * tests/faults.rs calls C_Finalize while other threads are inside C_GetInfo
 * and C_GenerateRandom, to check that p11audit neither deadlocks nor crashes
 * and passes the provider's return codes through. SoftHSM 2.6.1 itself does
 * not survive that: its C_Finalize deletes the instance that a concurrent
 * C_GenerateRandom is using (PKCS#11 leaves C_Finalize during other calls to
 * the library), and it crashes inside libsofthsm2.so within a few iterations
 * without p11audit in between. This module takes one lock around those three
 * functions, so SoftHSM sees them one at a time; p11audit's own code still
 * runs concurrently with C_Finalize, which is what the test is about.
 *
 * Build: cc -shared -fPIC -Itests/c tests/c/finalize_gate.c -o finalize_gate -ldl -lpthread
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

#include "mini_pkcs11.h"

#define CKR_GENERAL_ERROR 0x00000005UL

typedef CK_RV (*finalize_fn)(CK_VOID_PTR);
typedef CK_RV (*get_info_fn)(CK_INFO *);
typedef CK_RV (*random_fn)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG);

/* A FIFO ticket lock rather than a pthread mutex: a mutex is unfair, and three
 * threads calling C_GenerateRandom in a loop can keep C_Finalize waiting for a
 * quarter of a second at a time; the test is about racing, not starving. */
static unsigned long next_ticket, now_serving;

static void gate_enter(void)
{
    unsigned long t = __atomic_fetch_add(&next_ticket, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&now_serving, __ATOMIC_ACQUIRE) != t)
        sched_yield();
}

static void gate_leave(void)
{
    __atomic_fetch_add(&now_serving, 1, __ATOMIC_RELEASE);
}
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static CK_RV load_rv = CKR_GENERAL_ERROR;
static CK_FUNCTION_LIST gate;
static finalize_fn real_finalize;
static get_info_fn real_get_info;
static random_fn real_random;

static CK_RV gated_finalize(CK_VOID_PTR reserved)
{
    CK_RV rv;
    gate_enter();
    rv = real_finalize(reserved);
    gate_leave();
    return rv;
}

static CK_RV gated_get_info(CK_INFO *info)
{
    CK_RV rv;
    gate_enter();
    rv = real_get_info(info);
    gate_leave();
    return rv;
}

static CK_RV gated_random(CK_SESSION_HANDLE s, CK_BYTE *out, CK_ULONG len)
{
    CK_RV rv;
    gate_enter();
    rv = real_random(s, out, len);
    gate_leave();
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
    const char *path = getenv("FINALIZE_GATE_MODULE");
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST *real = NULL;
    void *module;

    if (path == NULL) {
        fprintf(stderr, "finalize_gate: FINALIZE_GATE_MODULE is not set\n");
        return;
    }
    module = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (module == NULL) {
        fprintf(stderr, "finalize_gate: dlopen %s: %s\n", path, dlerror());
        return;
    }
    *(void **)&get = dlsym(module, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK || real == NULL) {
        fprintf(stderr, "finalize_gate: no function list from %s\n", path);
        return;
    }
    gate = *real;
    real_finalize = real->C_Finalize;
    real_get_info = real->C_GetInfo;
    real_random = real->C_GenerateRandom;
    gate.C_GetFunctionList = gate_get_function_list;
    gate.C_Finalize = gated_finalize;
    gate.C_GetInfo = gated_get_info;
    gate.C_GenerateRandom = gated_random;
    load_rv = CKR_OK;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    pthread_once(&load_once, load);
    if (load_rv != CKR_OK)
        return load_rv;
    return gate_get_function_list(list);
}
