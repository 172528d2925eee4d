/*
 * Stall-free helper pool for one optimizer step (issue #11). Header-only: include it in
 * ONE translation unit (every static here is per-TU, so two TUs would get two pools).
 *
 * Why not OpenMP: a `prange` is fork-join. The caller waits at the join for every team
 * thread, including one the OS has descheduled before it started its slice; on a 2-core
 * machine with one core busy that wait is a whole scheduler slice (~11 ms measured, issue
 * #11), and libgomp gives no way to take a descheduled member's slice back. Here the step
 * is cut into fixed chunks claimed from an atomic counter; the caller claims chunks too
 * and, after the counter runs out, waits only for chunks another thread has already
 * claimed (that thread was running when it claimed). A helper that never wakes costs
 * nothing. OpenMP may still be linked for omp_get_max_threads(): the thread count keeps
 * coming from the caller; nothing in this file uses OpenMP.
 *
 * API
 *   typedef void (*fa_chunk_fn)(void *ctx, ptrdiff_t chunk, int worker);
 *   void fa_pool_run(fa_chunk_fn fn, void *ctx, ptrdiff_t n_chunks, int n_threads);
 *       Runs fn(ctx, c, w) exactly once for every c in [0, n_chunks) and returns when all
 *       have finished (their writes are visible to the caller). w is 0 on the calling
 *       thread and 1 .. n_threads-1 on helpers, unique among the threads of one call (for
 *       per-worker scratch in ctx). At most n_threads threads run chunks of one call.
 *       Which thread runs which chunk depends on timing: a result that must not depend on
 *       the thread count must be computed per chunk and combined in chunk order.
 *       Never allocates after the helpers exist; helpers are created lazily, on the first
 *       call that asks for more than there are (a failed creation just means fewer
 *       helpers). Safe to call from several threads at once: one call at a time owns the
 *       helpers, a concurrent call runs all its chunks on its own thread (never blocks on
 *       another caller's job). fn must not call fa_pool_run itself (it would run serially).
 *       n_chunks must be < FA_POOL_MAX_CHUNKS (fa_chunk_size guarantees it).
 *   void fa_pool_after_fork_in_child(void);
 *       Forget the helpers (they do not exist in a fork child); the next call re-creates
 *       them. Also installed with pthread_atfork when the first helper is created, so a
 *       fork from C is covered too; calling it again is harmless.
 *   ptrdiff_t fa_chunk_size(ptrdiff_t total, ptrdiff_t grain);
 *   ptrdiff_t fa_chunk_count(ptrdiff_t total, ptrdiff_t chunk_size);
 *       The chunking rule: chunk c is elements [c*K, min((c+1)*K, total)), K =
 *       fa_chunk_size(total, grain). K depends on total and grain only, never on the
 *       thread count, so per-chunk results (and their chunk-order combination) are the
 *       same bits for every thread count. K is a multiple of FA_POOL_LINE_ELEMS (16: two
 *       threads never write one 64-byte line of an aligned float32 array).
 *
 * Claiming, and why a late helper cannot touch a newer job. One 64-bit word holds
 * (epoch << 32 | next chunk). A caller publishing a job first stores (epoch+1, CLOSED),
 * then the job fields, then (epoch+1, 0). A helper loads the word, reads the fields, and
 * claims with a compare-and-swap of the exact word it loaded, so a helper that slept
 * through the end of its job fails the CAS (the epoch moved on) and claims nothing. The
 * CLOSED store plus the fences around the field accesses (a seqlock) make sure that a
 * helper which read a newer job's fields also sees a newer word, so its CAS fails too.
 * The epoch is 32 bits: the CAS could only be fooled by a helper stalled between one load
 * and its CAS for exactly 2**32 jobs.
 *
 * Waiting. After a job a helper polls the word for FA_POOL_SPIN_NS (1 ms; a clock read
 * every 16 polls: PAUSE costs ~0.6 us on the KVM dev VM and a few ns elsewhere, so a
 * count of PAUSEs is no measure of time), then sleeps on a condition variable; the caller
 * signals only when some helper sleeps (a Dekker pair: caller stores the word then reads
 * `sleepers`, helper increments `sleepers` then re-reads the word, both sequentially
 * consistent, so no wake-up is lost). The caller never waits for a wake-up: it starts on
 * chunk 0 at once.
 *
 * Portability: pthreads + GCC/Clang __atomic builtins (Linux, macOS, MinGW-pthreads), or
 * on MSVC Win32 threads, Interlocked*, ReadAcquire64/WriteRelease64, SRWLOCK and
 * CONDITION_VARIABLE (the Windows branch is written to the documented API but has not
 * been compiled yet: the dev VM has no Windows compiler; a Windows CI build must check
 * it). Defining FA_POOL_SERIAL_ONLY makes fa_pool_run
 * run every chunk on the caller (an escape hatch for a platform with no threads).
 */
#ifndef FUSEDADAM_POOL_H
#define FUSEDADAM_POOL_H

#include <stddef.h>
#include <stdint.h>

typedef void (*fa_chunk_fn)(void *ctx, ptrdiff_t chunk, int worker);

#define FA_POOL_MAX_THREADS 256
#define FA_POOL_LINE_ELEMS 16
#define FA_POOL_MAX_CHUNKS ((ptrdiff_t)1 << 31)
#define FA_POOL_CLOSED 0xFFFFFFFFu
/* Recommended grain (elements per chunk) for fa_chunk_size: in bench/pool_load.sh's K
 * sweep (bench/results/pool_load_ksweep.json, shared 2-vCPU VM) medians fell from K=1024
 * to K=8192-32768 at N=1e5, 1e6 and the 100-array model in every condition; 16384 keeps
 * >= 6 chunks at N=1e5 for balance and bounds the work behind one claimed chunk
 * (~460 KB of float32 Adam traffic). Below 2 chunks (N <= 16384) the step is serial. */
#define FA_POOL_GRAIN 16384
#ifndef FA_POOL_SPIN_NS
/* helper: poll this long for the next job, then sleep. 1 ms, about what libgomp spins by
 * default: with 50 us a helper was asleep at the start of most back-to-back steps and the
 * toy model (0.4M elements, 98 arrays) ran no faster on 2 threads than on 1 (205 vs
 * 190 us; OpenMP 97 us); with 1 ms it took 107 us (bench/ab.py, shared 2-vCPU VM). The
 * caller never waits for a sleeping helper, so a longer spin costs only the helper's CPU. */
#define FA_POOL_SPIN_NS 1000000
#endif
#ifndef FA_POOL_WAIT_SPIN_NS
#define FA_POOL_WAIT_SPIN_NS 50000 /* caller: poll this long for claimed chunks, then sleep */
#endif

/* ---- chunking rule ------------------------------------------------------------------ */

static ptrdiff_t fa_chunk_size(ptrdiff_t total, ptrdiff_t grain)
{
    ptrdiff_t k = grain < FA_POOL_LINE_ELEMS ? FA_POOL_LINE_ELEMS : grain;
    k -= k % FA_POOL_LINE_ELEMS;
    if (total / k >= FA_POOL_MAX_CHUNKS - 1) {          /* > 2**35 elements: grow K */
        k = total / (FA_POOL_MAX_CHUNKS - 2) + FA_POOL_LINE_ELEMS;
        k -= k % FA_POOL_LINE_ELEMS;
    }
    return k;
}

static ptrdiff_t fa_chunk_count(ptrdiff_t total, ptrdiff_t chunk_size)
{
    return total <= 0 ? 0 : (total - 1) / chunk_size + 1;
}

/* ---- test hooks (compiled in only for tests/c/test_pool.c) -------------------------- */

#ifdef FA_POOL_TEST_HOOKS
enum { FA_HOOK_HELPER_WOKE = 1, FA_HOOK_BEFORE_CAS = 2, FA_HOOK_AFTER_CAS = 3 };
/* point, helper worker id, the word the helper loaded, CAS result (AFTER_CAS only) */
static void (*fa_pool_test_hook)(int point, int worker, uint64_t word, int ok);
#define FA_HOOK(point, worker, word, ok) \
    do { if (fa_pool_test_hook) fa_pool_test_hook(point, worker, word, ok); } while (0)
#else
#define FA_HOOK(point, worker, word, ok) do { } while (0)
#endif

#ifdef FA_POOL_SERIAL_ONLY

static void fa_pool_run(fa_chunk_fn fn, void *ctx, ptrdiff_t n_chunks, int n_threads)
{
    ptrdiff_t c;
    (void)n_threads;
    for (c = 0; c < n_chunks; c++)
        fn(ctx, c, 0);
}
static void fa_pool_after_fork_in_child(void) {}

#else

/* ---- platform shim ------------------------------------------------------------------ */

#if defined(_MSC_VER) && !defined(__clang__)
#include <windows.h>
#include <process.h>
#include <intrin.h>
typedef volatile LONG64 fa_a64;
typedef volatile LONG fa_a32;
typedef void *volatile fa_aptr;
#define fa_load_acq64(p) ((uint64_t)ReadAcquire64((p)))
#define fa_load_seq64(p) ((uint64_t)InterlockedCompareExchange64((p), 0, 0))
#define fa_store_seq64(p, v) ((void)InterlockedExchange64((p), (LONG64)(v)))
#define fa_cas64(p, expect, desired) \
    (InterlockedCompareExchange64((p), (LONG64)(desired), (LONG64)(expect)) == (LONG64)(expect))
#define fa_fetch_add64(p, v) ((uint64_t)InterlockedExchangeAdd64((p), (LONG64)(v)))
#define fa_load_rlx64(p) ((int64_t)ReadNoFence64((p)))
#define fa_store_rlx64(p, v) WriteNoFence64((p), (LONG64)(v))
#define fa_load_acq32(p) ((int)ReadAcquire((p)))
#define fa_load_seq32(p) ((int)InterlockedCompareExchange((p), 0, 0))
#define fa_store_rel32(p, v) WriteRelease((p), (LONG)(v))
#define fa_store_seq32(p, v) ((void)InterlockedExchange((p), (LONG)(v)))
#define fa_fetch_add32(p, v) ((int)InterlockedExchangeAdd((p), (LONG)(v)))
#define fa_cas32(p, expect, desired) \
    (InterlockedCompareExchange((p), (LONG)(desired), (LONG)(expect)) == (LONG)(expect))
#define fa_load_rlxptr(p) ((void *)ReadPointerNoFence((PVOID volatile *)(p)))
#define fa_store_rlxptr(p, v) WritePointerNoFence((PVOID volatile *)(p), (PVOID)(v))
#define fa_fence_acq() MemoryBarrier()
#define fa_fence_rel() MemoryBarrier()
#define fa_cpu_relax() YieldProcessor()
static int64_t fa_now_ns(void)
{
    static LARGE_INTEGER freq;
    LARGE_INTEGER t;
    if (freq.QuadPart == 0)
        QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&t);
    return (int64_t)((double)t.QuadPart * 1e9 / (double)freq.QuadPart);
}
typedef SRWLOCK fa_mutex;
typedef CONDITION_VARIABLE fa_cond;
#define fa_mutex_init(m) InitializeSRWLock(m)
#define fa_mutex_lock(m) AcquireSRWLockExclusive(m)
#define fa_mutex_unlock(m) ReleaseSRWLockExclusive(m)
#define fa_cond_init(c) InitializeConditionVariable(c)
#define fa_cond_wait(c, m) SleepConditionVariableSRW((c), (m), INFINITE, 0)
#define fa_cond_broadcast(c) WakeAllConditionVariable(c)
typedef unsigned(__stdcall *fa_thread_fn)(void *);
#define FA_THREAD_RET unsigned __stdcall
#define FA_THREAD_RETVAL 0
static int fa_thread_start(unsigned(__stdcall *fn)(void *), void *arg)
{
    uintptr_t h = _beginthreadex(NULL, 0, fn, arg, 0, NULL);
    if (h == 0)
        return -1;
    CloseHandle((HANDLE)h);
    return 0;
}
#define FA_POOL_HAVE_FORK 0
#else
#include <pthread.h>
#include <sched.h>
#include <signal.h>
typedef int64_t fa_a64;
typedef int fa_a32;
typedef void *fa_aptr;
#define fa_load_acq64(p) ((uint64_t)__atomic_load_n((p), __ATOMIC_ACQUIRE))
#define fa_load_seq64(p) ((uint64_t)__atomic_load_n((p), __ATOMIC_SEQ_CST))
#define fa_store_seq64(p, v) __atomic_store_n((p), (int64_t)(v), __ATOMIC_SEQ_CST)
static int fa_cas64_impl(int64_t *p, uint64_t expect, uint64_t desired)
{
    int64_t e = (int64_t)expect;
    return __atomic_compare_exchange_n(p, &e, (int64_t)desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}
#define fa_cas64(p, expect, desired) fa_cas64_impl((p), (expect), (desired))
#define fa_fetch_add64(p, v) ((uint64_t)__atomic_fetch_add((p), (int64_t)(v), __ATOMIC_SEQ_CST))
#define fa_load_rlx64(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define fa_store_rlx64(p, v) __atomic_store_n((p), (int64_t)(v), __ATOMIC_RELAXED)
#define fa_load_acq32(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define fa_load_seq32(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define fa_store_rel32(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define fa_store_seq32(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define fa_fetch_add32(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
static int fa_cas32_impl(int *p, int expect, int desired)
{
    return __atomic_compare_exchange_n(p, &expect, desired, 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}
#define fa_cas32(p, expect, desired) fa_cas32_impl((p), (expect), (desired))
#define fa_load_rlxptr(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define fa_store_rlxptr(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define fa_fence_acq() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define fa_fence_rel() __atomic_thread_fence(__ATOMIC_RELEASE)
#if defined(__x86_64__) || defined(__i386__)
#define fa_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define fa_cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define fa_cpu_relax() __atomic_signal_fence(__ATOMIC_SEQ_CST)
#endif
#include <time.h>
static int64_t fa_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
typedef pthread_mutex_t fa_mutex;
typedef pthread_cond_t fa_cond;
#define fa_mutex_init(m) pthread_mutex_init((m), NULL)
#define fa_mutex_lock(m) pthread_mutex_lock(m)
#define fa_mutex_unlock(m) pthread_mutex_unlock(m)
#define fa_cond_init(c) pthread_cond_init((c), NULL)
#define fa_cond_wait(c, m) pthread_cond_wait((c), (m))
#define fa_cond_broadcast(c) pthread_cond_broadcast(c)
#define FA_THREAD_RET void *
#define FA_THREAD_RETVAL NULL
static int fa_thread_start(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    pthread_attr_t attr;
    sigset_t all, old;
    int rc;
    if (pthread_attr_init(&attr) != 0)
        return -1;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* Helpers never take signals: Python's handlers expect the main thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&t, &attr, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}
#define FA_POOL_HAVE_FORK 1
#endif

/* ---- the pool ----------------------------------------------------------------------- */

#define FA_EPOCH(w) ((uint32_t)((uint64_t)(w) >> 32))
#define FA_NEXT(w) ((uint32_t)((uint64_t)(w) & 0xFFFFFFFFu))
#define FA_WORD(epoch, next) (((uint64_t)(uint32_t)(epoch) << 32) | (uint32_t)(next))

/* Separate 64-byte lines: the claim word is written on every claim; the job fields are
 * read-only while a job runs; `done` is written once per helper chunk. */
static struct {
    fa_a64 word;                            /* (epoch, next chunk) */
    char pad0[64 - sizeof(fa_a64)];
    fa_aptr fn;                             /* job fields, read under the seqlock */
    fa_aptr ctx;
    fa_a64 n_chunks;
    fa_a64 n_helpers;                       /* helpers with id <= n_helpers take part */
    char pad1[64 - 2 * sizeof(void *) - 2 * sizeof(fa_a64)];
    fa_a64 done;                            /* chunks finished by helpers, this job */
    char pad2[64 - sizeof(fa_a64)];
    fa_a32 busy;                            /* 1 while a caller owns the job slot */
    fa_a32 sleepers;                        /* helpers blocked (or about to) on `wake` */
    fa_a32 caller_sleeps;                   /* 1 while the caller blocks on `finished` */
    int n_created;                          /* helpers started; guarded by `busy` */
    int sync_ready;                         /* mutex/cond initialised; guarded by `busy` */
    fa_mutex lock;
    fa_cond wake;
    fa_cond finished;
} fa_pool_state;

/* Per helper, written only before its thread starts (a synchronisation point): its id
 * and the epoch before the job it is created for, so it takes part in that very job. */
static struct fa_pool_helper_arg {
    int worker;
    uint32_t start_epoch;
} fa_pool_helper_args[FA_POOL_MAX_THREADS];

/* Claim and run chunks of the job with epoch `epoch` until none is left for this helper.
 * Every claim is a CAS of the exact word loaded, so it fails once the epoch moves on. */
static void fa_pool_help(int worker, uint32_t epoch)
{
    for (;;) {
        uint64_t w = fa_load_acq64(&fa_pool_state.word);
        fa_chunk_fn fn;
        void *ctx;
        int64_t n, nh;
        int ok;
        if (FA_EPOCH(w) != epoch || FA_NEXT(w) == FA_POOL_CLOSED)
            return;
        fn = (fa_chunk_fn)fa_load_rlxptr(&fa_pool_state.fn);
        ctx = fa_load_rlxptr(&fa_pool_state.ctx);
        n = fa_load_rlx64(&fa_pool_state.n_chunks);
        nh = fa_load_rlx64(&fa_pool_state.n_helpers);
        /* Pairs with the caller's release fence after its CLOSED store: if any field
         * above came from a newer job, the CAS below sees a newer word and fails. */
        fa_fence_acq();
        if (worker > nh || (int64_t)FA_NEXT(w) >= n)
            return;
        FA_HOOK(FA_HOOK_BEFORE_CAS, worker, w, 0);
        ok = fa_cas64(&fa_pool_state.word, w, w + 1);
        FA_HOOK(FA_HOOK_AFTER_CAS, worker, w, ok);
        if (ok) {
            fn(ctx, (ptrdiff_t)FA_NEXT(w), worker);
            /* Publishes the chunk's writes; seq_cst with the load below pairs with the
             * caller's store to caller_sleeps and load of done (no lost wake-up). */
            fa_fetch_add64(&fa_pool_state.done, 1);
            if (fa_load_seq32(&fa_pool_state.caller_sleeps)) {
                fa_mutex_lock(&fa_pool_state.lock);
                fa_cond_broadcast(&fa_pool_state.finished);
                fa_mutex_unlock(&fa_pool_state.lock);
            }
        }
    }
}

static FA_THREAD_RET fa_pool_helper_main(void *arg)
{
    int worker = ((struct fa_pool_helper_arg *)arg)->worker;
    uint32_t seen = ((struct fa_pool_helper_arg *)arg)->start_epoch;
    for (;;) {
        uint64_t w = 0;
        int found = 0, spin;
        int64_t until = fa_now_ns() + FA_POOL_SPIN_NS;
        do {
            for (spin = 0; spin < 16 && !found; spin++) {
                w = fa_load_acq64(&fa_pool_state.word);
                found = FA_EPOCH(w) != seen && FA_NEXT(w) != FA_POOL_CLOSED;
                fa_cpu_relax();
            }
        } while (!found && fa_now_ns() < until);
        if (!found) {
            fa_mutex_lock(&fa_pool_state.lock);
            fa_fetch_add32(&fa_pool_state.sleepers, 1);
            for (;;) {
                w = fa_load_seq64(&fa_pool_state.word);
                if (FA_EPOCH(w) != seen && FA_NEXT(w) != FA_POOL_CLOSED)
                    break;
                fa_cond_wait(&fa_pool_state.wake, &fa_pool_state.lock);
            }
            fa_fetch_add32(&fa_pool_state.sleepers, -1);
            fa_mutex_unlock(&fa_pool_state.lock);
        }
        seen = FA_EPOCH(w);
        FA_HOOK(FA_HOOK_HELPER_WOKE, worker, w, 0);
        fa_pool_help(worker, seen);
    }
    return FA_THREAD_RETVAL;    /* not reached */
}

static void fa_pool_after_fork_in_child(void)
{
    /* Only the forking thread exists in the child; the helpers, and any job another
     * thread owned at fork time, are gone. Re-create lazily. */
    fa_pool_state.n_created = 0;
    fa_pool_state.sleepers = 0;
    fa_pool_state.caller_sleeps = 0;
    fa_pool_state.sync_ready = 0;
    fa_pool_state.busy = 0;
}

/* Called with `busy` held. Returns how many helpers exist (may be fewer than asked). */
static int fa_pool_grow(int want)
{
    if (!fa_pool_state.sync_ready) {
        fa_mutex_init(&fa_pool_state.lock);
        fa_cond_init(&fa_pool_state.wake);
        fa_cond_init(&fa_pool_state.finished);
        fa_pool_state.sync_ready = 1;
#if FA_POOL_HAVE_FORK
        {
            static int atfork_done = 0;
            if (!atfork_done && pthread_atfork(NULL, NULL, fa_pool_after_fork_in_child) == 0)
                atfork_done = 1;
        }
#endif
    }
    if (want > FA_POOL_MAX_THREADS - 1)
        want = FA_POOL_MAX_THREADS - 1;
    while (fa_pool_state.n_created < want) {
        int id = fa_pool_state.n_created + 1;
        fa_pool_helper_args[id - 1].worker = id;
        fa_pool_helper_args[id - 1].start_epoch = FA_EPOCH(fa_load_acq64(&fa_pool_state.word));
        if (fa_thread_start(fa_pool_helper_main, &fa_pool_helper_args[id - 1]) != 0)
            break;
        fa_pool_state.n_created = id;
    }
    return fa_pool_state.n_created;
}

static void fa_pool_run(fa_chunk_fn fn, void *ctx, ptrdiff_t n_chunks, int n_threads)
{
    uint64_t w;
    uint32_t epoch;
    int64_t mine = 0;
    int n_helpers;
    ptrdiff_t c;

    if (n_chunks <= 0)
        return;
    if (n_threads <= 1 || n_chunks == 1 || !fa_cas32(&fa_pool_state.busy, 0, 1)) {
        for (c = 0; c < n_chunks; c++)         /* alone, or the pool is another caller's */
            fn(ctx, c, 0);
        return;
    }
    n_helpers = fa_pool_grow(n_threads - 1);
    if (n_helpers > n_threads - 1)
        n_helpers = n_threads - 1;
    if (n_helpers > n_chunks - 1)
        n_helpers = (int)(n_chunks - 1);

    epoch = FA_EPOCH(fa_load_acq64(&fa_pool_state.word)) + 1;
    fa_store_seq64(&fa_pool_state.word, FA_WORD(epoch, FA_POOL_CLOSED));
    fa_fence_rel();
    fa_store_rlxptr(&fa_pool_state.fn, (void *)fn);
    fa_store_rlxptr(&fa_pool_state.ctx, ctx);
    fa_store_rlx64(&fa_pool_state.n_chunks, n_chunks);
    fa_store_rlx64(&fa_pool_state.n_helpers, n_helpers);
    fa_store_rlx64(&fa_pool_state.done, 0);
    fa_store_seq64(&fa_pool_state.word, FA_WORD(epoch, 0));   /* open: release + Dekker */
    if (fa_load_seq32(&fa_pool_state.sleepers) > 0) {
        fa_mutex_lock(&fa_pool_state.lock);
        fa_cond_broadcast(&fa_pool_state.wake);
        fa_mutex_unlock(&fa_pool_state.lock);
    }

    /* The caller is the job's owner: the epoch cannot change under it, so a plain
     * fetch-add claims (helpers stop at n; the caller overshoots n by one at most). */
    for (;;) {
        w = fa_fetch_add64(&fa_pool_state.word, 1);
        if ((int64_t)FA_NEXT(w) >= n_chunks)
            break;
        fn(ctx, (ptrdiff_t)FA_NEXT(w), 0);
        mine++;
    }
    /* Every chunk is claimed; the rest belong to helpers that were running when they
     * claimed them. Poll briefly (a helper's last chunk is short), then block: a helper
     * preempted mid-chunk can then run on the caller's core instead of waiting behind
     * another process for its own (an earlier version that spun, then sched_yield()ed,
     * measured 18 ms per 1e7 step against 7 ms serial on the shared dev VM). */
    if (mine + (int64_t)fa_load_acq64(&fa_pool_state.done) < n_chunks) {
        int64_t until = fa_now_ns() + FA_POOL_WAIT_SPIN_NS;
        int spin;
        for (;;) {
            for (spin = 0; spin < 16; spin++) {
                if (mine + (int64_t)fa_load_acq64(&fa_pool_state.done) >= n_chunks)
                    goto all_done;
                fa_cpu_relax();
            }
            if (fa_now_ns() >= until)
                break;
        }
        fa_mutex_lock(&fa_pool_state.lock);
        fa_store_seq32(&fa_pool_state.caller_sleeps, 1);
        while (mine + (int64_t)fa_load_seq64(&fa_pool_state.done) < n_chunks)
            fa_cond_wait(&fa_pool_state.finished, &fa_pool_state.lock);
        fa_store_seq32(&fa_pool_state.caller_sleeps, 0);
        fa_mutex_unlock(&fa_pool_state.lock);
    }
all_done:
    fa_store_rel32(&fa_pool_state.busy, 0);
}

#endif /* FA_POOL_SERIAL_ONLY */
#endif /* FUSEDADAM_POOL_H */
