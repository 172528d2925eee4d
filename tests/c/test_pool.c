/*
 * Tests of src/fusedadam/_pool.h that need only a C compiler:
 *     cc -O2 -pthread -I src/fusedadam tests/c/test_pool.c -o test_pool && ./test_pool
 * (tests/test_pool_c.py does exactly that). Prints one line per test and exits non-zero
 * on the first failure. Every wait on another thread has a deadline, so a hang is a
 * failure, not a stuck test run.
 */
#define FA_POOL_TEST_HOOKS 1
#include "_pool.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
            fprintf(stderr, __VA_ARGS__);                                             \
            fprintf(stderr, "\n");                                                    \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* ---- counting job ------------------------------------------------------------------- */

#define MAXC 5000
typedef struct {
    int count[MAXC];        /* how often each chunk ran */
    int by_worker[8];       /* chunks per worker id */
    int tag;                /* which job a call believed it belonged to */
    int wrong_tag;          /* chunks run with a ctx whose job had already finished */
    volatile int finished;  /* set by the test after fa_pool_run returned */
} counter;

static void count_chunk(void *vctx, ptrdiff_t c, int worker)
{
    counter *k = vctx;
    if (__atomic_load_n(&k->finished, __ATOMIC_ACQUIRE))
        __atomic_fetch_add(&k->wrong_tag, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&k->count[c], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&k->by_worker[worker < 8 ? worker : 7], 1, __ATOMIC_RELAXED);
}

static void check_once(const counter *k, ptrdiff_t n, const char *what)
{
    ptrdiff_t c;
    for (c = 0; c < n; c++)
        CHECK(k->count[c] == 1, "%s: chunk %td ran %d times", what, c, k->count[c]);
    for (; c < MAXC; c++)
        CHECK(k->count[c] == 0, "%s: chunk %td beyond n=%td ran", what, c, n);
}

static void test_every_chunk_once(void)
{
    static counter k;
    const ptrdiff_t sizes[] = {0, 1, 2, 7, 1000, MAXC};
    int threads[] = {1, 2, 3, 4, 8};
    size_t i, j;
    long helped = 0;
    for (i = 0; i < sizeof sizes / sizeof *sizes; i++)
        for (j = 0; j < sizeof threads / sizeof *threads; j++) {
            char what[64];
            memset(&k, 0, sizeof k);
            fa_pool_run(count_chunk, &k, sizes[i], threads[j]);
            snprintf(what, sizeof what, "n=%td threads=%d", sizes[i], threads[j]);
            check_once(&k, sizes[i], what);
            CHECK(k.by_worker[7] == 0 || threads[j] == 8, "%s: worker id out of range", what);
            if (threads[j] == 1)
                CHECK(k.by_worker[0] == sizes[i], "%s: 1 thread used a helper", what);
            helped += sizes[i] - k.by_worker[0];
        }
    printf("ok every chunk exactly once (n 0,1,2,7,1000,5000 x threads 1,2,3,4,8; "
           "%ld chunks ran on helpers)\n", helped);
}

static void test_back_to_back(void)
{
    static counter k;
    int job;
    long helped = 0;
    for (job = 0; job < 20000; job++) {
        ptrdiff_t n = 1 + job % 37;
        memset(&k, 0, sizeof k);
        fa_pool_run(count_chunk, &k, n, 2 + job % 3);
        check_once(&k, n, "back to back");
        helped += n - k.by_worker[0];
    }
    printf("ok 20000 jobs back to back (%ld chunks on helpers)\n", helped);
}

/* ---- hooks: block helpers, or stop one between its load and its CAS ---------------- */

static volatile int hook_block_woken;       /* helpers stop right after waking */
static volatile int hook_blocked;           /* how many are stopped there now */
static volatile int hook_blocked_max;
static volatile uint32_t hook_hold_epoch;   /* helper 1 stops before a CAS at chunk >= 1 of this job */
static volatile int hook_held;              /* 1 while it is stopped */
static volatile uint64_t hook_held_word;
static volatile int hook_late_cas_done;     /* 1 after the held helper's CAS, result in: */
static volatile int hook_late_cas_ok;

static void test_hook(int point, int worker, uint64_t word, int ok)
{
    if (point == FA_HOOK_HELPER_WOKE && __atomic_load_n(&hook_block_woken, __ATOMIC_ACQUIRE)) {
        int now = __atomic_add_fetch(&hook_blocked, 1, __ATOMIC_ACQ_REL);
        int seen = __atomic_load_n(&hook_blocked_max, __ATOMIC_RELAXED);
        while (now > seen && !__atomic_compare_exchange_n(&hook_blocked_max, &seen, now, 0,
                                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            ;
        while (__atomic_load_n(&hook_block_woken, __ATOMIC_ACQUIRE))
            usleep(100);
        __atomic_fetch_add(&hook_blocked, -1, __ATOMIC_ACQ_REL);
    }
    /* Only helper 1 is ever held: the late-helper jobs use 2 threads, so while it is held
     * no other helper takes part and the caller runs every chunk in order. */
    if (point == FA_HOOK_BEFORE_CAS && worker == 1) {
        uint32_t target = FA_EPOCH(word);
        if (target != 0 && FA_NEXT(word) >= 1 && __atomic_compare_exchange_n(&hook_hold_epoch, &target, 0, 0,
                                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&hook_held_word, word, __ATOMIC_RELAXED);
            __atomic_store_n(&hook_held, 1, __ATOMIC_RELEASE);
            while (__atomic_load_n(&hook_held, __ATOMIC_ACQUIRE))
                usleep(100);
            /* released: the CAS follows; report it at AFTER_CAS */
            __atomic_store_n(&hook_late_cas_done, -1, __ATOMIC_RELEASE);
        }
    }
    if (point == FA_HOOK_AFTER_CAS && __atomic_load_n(&hook_late_cas_done, __ATOMIC_ACQUIRE) == -1
        && word == __atomic_load_n(&hook_held_word, __ATOMIC_RELAXED)) {
        __atomic_store_n(&hook_late_cas_ok, ok, __ATOMIC_RELAXED);
        __atomic_store_n(&hook_late_cas_done, 1, __ATOMIC_RELEASE);
    }
}

static void wait_until(volatile int *flag, int value, double seconds, const char *what)
{
    double end = now_s() + seconds;
    while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != value) {
        CHECK(now_s() < end, "timed out waiting for %s", what);
        usleep(50);
    }
}

/* Helpers that never start work must not delay the caller: with every helper stopped
 * the caller alone runs all chunks and returns. */
static void test_caller_finishes_alone(void)
{
    static counter k;
    int job;
    /* Make sure 3 helpers exist and are parked past their spin (sleeping). */
    memset(&k, 0, sizeof k);
    fa_pool_run(count_chunk, &k, 100, 4);
    __atomic_store_n(&hook_block_woken, 1, __ATOMIC_RELEASE);
    for (job = 0; job < 50; job++) {
        double t0;
        memset(&k, 0, sizeof k);
        t0 = now_s();
        fa_pool_run(count_chunk, &k, 1000, 4);
        CHECK(now_s() - t0 < 1.0, "caller took %.3f s", now_s() - t0);
        check_once(&k, 1000, "helpers blocked");
        CHECK(k.by_worker[0] == 1000, "a blocked helper ran %d chunks", 1000 - k.by_worker[0]);
        __atomic_store_n(&k.finished, 1, __ATOMIC_RELEASE);
    }
    {   /* the helpers see the new epochs eventually, even if all 50 jobs were faster */
        double deadline = now_s() + 5.0;
        while (__atomic_load_n(&hook_blocked, __ATOMIC_ACQUIRE) < 1)
            CHECK(now_s() < deadline, "no helper was ever woken and blocked");
    }
    __atomic_store_n(&hook_block_woken, 0, __ATOMIC_RELEASE);
    wait_until(&hook_blocked, 0, 5.0, "blocked helpers to resume");
    /* The released helpers re-check the word; they must not run chunks of finished jobs. */
    usleep(20000);
    CHECK(k.wrong_tag == 0, "a helper ran a chunk of a finished job");
    memset(&k, 0, sizeof k);
    fa_pool_run(count_chunk, &k, 1000, 4);
    check_once(&k, 1000, "after unblocking");
    printf("ok caller finishes every job alone while helpers are stopped "
           "(%d helpers were stopped)\n", __atomic_load_n(&hook_blocked_max, __ATOMIC_RELAXED));
}

/* A helper stopped between loading (epoch E, next c) and its CAS must not claim chunk c
 * of job E+1: its CAS has to fail, and job E+1's chunks still run exactly once. */
typedef struct {
    counter k;
    int release_at_chunk;
} late_ctx;

static void late_chunk(void *vctx, ptrdiff_t c, int worker)
{
    late_ctx *l = vctx;
    count_chunk(&l->k, c, worker);
    if (c == l->release_at_chunk && worker == 0) {
        /* Job E+1 is open with chunks left: let the stale helper try its CAS now. */
        __atomic_store_n(&hook_held, 0, __ATOMIC_RELEASE);
        wait_until(&hook_late_cas_done, 1, 5.0, "the late helper's CAS");
    }
}

static void slow_chunk(void *vctx, ptrdiff_t c, int worker)
{
    double end = now_s() + 2e-6;            /* long enough that helper 1 surely joins */
    count_chunk(vctx, c, worker);
    while (now_s() < end)
        ;
}

static void test_late_helper(void)
{
    static counter old;
    static late_ctx next;
    int tries;
    ptrdiff_t c = 0;
    for (tries = 0; tries < 200; tries++) {
        uint32_t target = FA_EPOCH(fa_load_acq64(&fa_pool_state.word)) + 1, arm = target;
        double deadline;
        __atomic_store_n(&hook_late_cas_done, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&hook_late_cas_ok, -1, __ATOMIC_RELEASE);
        __atomic_store_n(&hook_hold_epoch, target, __ATOMIC_RELEASE);
        memset(&old, 0, sizeof old);
        fa_pool_run(slow_chunk, &old, 2000, 2);           /* job E = target */
        __atomic_store_n(&old.finished, 1, __ATOMIC_RELEASE);
        check_once(&old, 2000, "job E");
        /* Disarm; if helper 1 took the hold first, it is (about to be) held. */
        if (__atomic_compare_exchange_n(&hook_hold_epoch, &arm, 0, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            continue;                                     /* never reached a CAS in job E */
        deadline = now_s() + 5.0;
        while (!__atomic_load_n(&hook_held, __ATOMIC_ACQUIRE))
            CHECK(now_s() < deadline, "the holding helper never stopped");
        c = (ptrdiff_t)FA_NEXT(__atomic_load_n(&hook_held_word, __ATOMIC_RELAXED));
        CHECK(FA_EPOCH(hook_held_word) == target, "held in the wrong job");
        if (c >= 1)
            break;                                        /* held at chunk c >= 1 of E */
        __atomic_store_n(&hook_held, 0, __ATOMIC_RELEASE); /* c == 0: retry */
        wait_until(&hook_late_cas_done, 1, 5.0, "a released helper's CAS");
        CHECK(hook_late_cas_ok == 0, "a helper claimed in a finished job");
        c = 0;
    }
    CHECK(c >= 1, "helper 1 never stopped before a CAS at chunk >= 1 in %d jobs", tries);
    memset(&next, 0, sizeof next);
    next.release_at_chunk = (int)c - 1;
    /* The caller runs chunks 0 .. c-1 of job E+1 alone (the only helper is held); in
     * chunk c-1 the word is (E+1, c), which a claim ignoring the epoch would take. It
     * releases the helper there and waits for its CAS. */
    fa_pool_run(late_chunk, &next, c + 50, 2);
    CHECK(hook_late_cas_done == 1, "late CAS not observed");
    CHECK(hook_late_cas_ok == 0, "a helper holding a word of job E claimed in job E+1");
    check_once(&next.k, c + 50, "job E+1");
    check_once(&old, 2000, "job E");
    CHECK(old.wrong_tag == 0, "job E's function ran after job E returned");
    printf("ok a helper stalled before its CAS in job E claims nothing in job E+1 "
           "(held at chunk %td of 2000, %d tries)\n", c, tries + 1);
}

/* ---- two callers at once ------------------------------------------------------------ */

typedef struct {
    counter k;
    int jobs;
    int failures;
} caller_arg;

static void *caller_thread(void *varg)
{
    caller_arg *a = varg;
    int job;
    ptrdiff_t c;
    for (job = 0; job < a->jobs; job++) {
        ptrdiff_t n = 1 + (job * 7919) % 300;
        memset(a->k.count, 0, sizeof a->k.count);
        fa_pool_run(count_chunk, &a->k, n, 2);
        for (c = 0; c < MAXC; c++)
            if (a->k.count[c] != (c < n))
                a->failures++;
    }
    return NULL;
}

static void test_two_callers(void)
{
    static caller_arg a, b;
    pthread_t ta, tb;
    a.jobs = b.jobs = 3000;
    CHECK(pthread_create(&ta, NULL, caller_thread, &a) == 0, "pthread_create");
    CHECK(pthread_create(&tb, NULL, caller_thread, &b) == 0, "pthread_create");
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(a.failures == 0 && b.failures == 0, "miscounted chunks: %d, %d", a.failures,
          b.failures);
    printf("ok two caller threads, 3000 jobs each, every chunk once (helper chunks: %d, %d)\n",
           a.k.by_worker[1], b.k.by_worker[1]);
}

/* ---- fork --------------------------------------------------------------------------- */

static void test_fork(int via_api)
{
    static counter k;
    pid_t pid;
    int status = 0;
    double end;
    memset(&k, 0, sizeof k);
    fa_pool_run(count_chunk, &k, 1000, 2);             /* helpers exist in the parent */
    pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int job;
        alarm(20);                                      /* a hang kills the child */
        if (via_api)
            fa_pool_after_fork_in_child();
        for (job = 0; job < 200; job++) {
            memset(&k, 0, sizeof k);
            fa_pool_run(count_chunk, &k, 1000, 2);
            for (ptrdiff_t c = 0; c < 1000; c++)
                if (k.count[c] != 1)
                    _exit(3);
        }
        _exit(k.by_worker[0] + k.by_worker[1] == 1000 ? 0 : 4);
    }
    end = now_s() + 30;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        CHECK(now_s() < end, "child hung after fork");
        usleep(1000);
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed (status %d)", status);
    memset(&k, 0, sizeof k);
    fa_pool_run(count_chunk, &k, 1000, 2);
    check_once(&k, 1000, "parent after fork");
    printf("ok fork after use: child runs 200 jobs correctly%s; parent still works\n",
           via_api ? " (fa_pool_after_fork_in_child called)" : " (pthread_atfork only)");
}

/* ---- bit-identical per-chunk reduction ---------------------------------------------- */

#define NE 1000003
#define K 4096
typedef struct {
    float *p, *g, *m, *v;
    ptrdiff_t n, k;
    float partial[NE / 16 + 2];             /* per-chunk sum of |update| */
} adam_ctx;

static void adam_chunk(void *vctx, ptrdiff_t c, int worker)
{
    adam_ctx *a = vctx;
    ptrdiff_t i, start = c * a->k, end = start + a->k < a->n ? start + a->k : a->n;
    float s = 0.0f;
    (void)worker;
    for (i = start; i < end; i++) {
        float g = a->g[i], u;
        a->m[i] = 0.9f * a->m[i] + 0.1f * g;
        a->v[i] = 0.999f * a->v[i] + 0.001f * g * g;
        u = 0.01f * a->m[i] / (sqrtf(a->v[i]) + 1e-8f);
        a->p[i] -= u;
        s += fabsf(u);
    }
    a->partial[c] = s;
}

static void test_bits(void)
{
    static adam_ctx a;
    static float ref[3][NE];
    float total[3];
    int t, rep, threads[] = {1, 2, 4};
    a.n = NE;
    a.k = fa_chunk_size(NE, K);
    CHECK(a.k == K && fa_chunk_count(NE, a.k) == NE / K + 1, "chunking rule");
    CHECK(fa_chunk_count(0, K) == 0 && fa_chunk_count(1, K) == 1 && fa_chunk_count(K, K) == 1,
          "chunk counts at the edges");
    CHECK(fa_chunk_size(100, 10) == 16 && fa_chunk_size(100, 40) == 32, "grain rounding");
    a.p = malloc(NE * sizeof(float));
    a.g = malloc(NE * sizeof(float));
    a.m = malloc(NE * sizeof(float));
    a.v = malloc(NE * sizeof(float));
    for (t = 0; t < 3; t++) {
        unsigned s = 12345;
        ptrdiff_t i, c, nc = fa_chunk_count(NE, a.k);
        for (i = 0; i < NE; i++) {
            s = s * 1664525u + 1013904223u;
            a.p[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
            a.g[i] = (float)((s >> 4) & 0xFFFF) / 65536.0f - 0.5f;
            a.m[i] = a.v[i] = 0.0f;
        }
        total[t] = 0.0f;
        for (rep = 0; rep < 5; rep++) {
            fa_pool_run(adam_chunk, &a, nc, threads[t]);
            for (c = 0; c < nc; c++)
                total[t] += a.partial[c];
        }
        memcpy(ref[t], a.p, NE * sizeof(float));
    }
    for (t = 1; t < 3; t++) {
        CHECK(memcmp(ref[0], ref[t], sizeof ref[0]) == 0, "params differ, %d threads", threads[t]);
        CHECK(memcmp(&total[0], &total[t], sizeof(float)) == 0, "sum differs, %d threads: %a vs %a",
              threads[t], total[0], total[t]);
    }
    printf("ok per-chunk sums in chunk order and params bit-identical for 1, 2, 4 threads "
           "(sum %a)\n", total[0]);
    free(a.p); free(a.g); free(a.m); free(a.v);
}

int main(void)
{
    fa_pool_test_hook = test_hook;
    test_every_chunk_once();
    test_back_to_back();
    test_bits();
    test_caller_finishes_alone();
    test_late_helper();
    test_two_callers();
    test_fork(0);
    test_fork(1);
    printf("all pool tests passed\n");
    return 0;
}
