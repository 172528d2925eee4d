/*
 * The one dispatch table: instruction set x element type -> every compiled loop (the dense
 * kinds of _loops.h, the non-finite scan of _finite.h, SparseAdam's rows of
 * _sparse_rows.h). Adding an instruction set is one line of FA_ISAS, an element type one
 * line of FA_DTYPES, a dense loop kind one line of FA_DENSE_KINDS (_loops.h). The rows of
 * FA_DTYPES are the compute types; bfloat16/float16 storage (params, gradients, state) is
 * widened into them block by block by each row's staged runner (_staged.h), and the
 * gradient scans of every storage type are the second table, fa_grad_table.
 *
 * Every loop is compiled once per instruction set with a per-function target attribute and
 * chosen at run time (no -march flag: the wheel stays portable). FMA is deliberately not
 * enabled: a fused multiply-add rounds once, NumPy twice.
 */
#ifndef FUSEDADAM_DISPATCH_H
#define FUSEDADAM_DISPATCH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "_loops.h"
#include "_finite.h"
#include "_sparse_rows.h"

#include "_convert.h"
#include "_gradscan.h"
#include "_q8.h"
#include "_segment.h"
#include "_staged.h"

/* Instruction sets, narrowest first, with their target attributes; one list per
 * architecture. x86-64: SSE2 (the x86-64 baseline), AVX2, AVX-512F. aarch64: "baseline" is
 * the plain C compiled without the vectoriser (gcc; clang ignores that attribute and
 * vectorises it with NEON), "neon" the same C vectorised for Advanced SIMD (present on
 * every aarch64 CPU), "sve" vectorised for SVE, vector-length agnostic (one copy for 128 to
 * 2048-bit vectors), chosen when the kernel reports SVE (getauxval). Other targets (and
 * MSVC): the plain C, with the x86 rows' names as copies that are never chosen. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FA_ISAS(X) X(baseline) X(avx2) X(avx512)
#define FA_HAVE_X86_DISPATCH 1
#define FA_HAVE_ARM_DISPATCH 0
#define FA_ATTR_baseline
#define FA_ATTR_avx2 __attribute__((target("avx2")))
#define FA_ATTR_avx512 __attribute__((target("avx512f,prefer-vector-width=512")))
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
#define FA_ISAS(X) X(baseline) X(neon) X(sve)
#define FA_HAVE_X86_DISPATCH 0
#define FA_ATTR_neon
#if defined(__linux__) && defined(__clang__)
#define FA_HAVE_ARM_DISPATCH 1
#define FA_ATTR_baseline
#define FA_ATTR_sve __attribute__((target("sve")))
#elif defined(__linux__)
#define FA_HAVE_ARM_DISPATCH 1
#define FA_ATTR_baseline __attribute__((optimize("no-tree-vectorize")))
#define FA_ATTR_sve __attribute__((target("+sve")))
#else  /* no getauxval (macOS, whose CPUs have no SVE): the sve row is a copy, never chosen */
#define FA_HAVE_ARM_DISPATCH 0
#define FA_ATTR_baseline
#define FA_ATTR_sve
#endif
#else  /* one code path: the wider rows are baseline copies, never chosen */
#define FA_ISAS(X) X(baseline) X(avx2) X(avx512)
#define FA_HAVE_X86_DISPATCH 0
#define FA_HAVE_ARM_DISPATCH 0
#define FA_ATTR_baseline
#define FA_ATTR_avx2
#define FA_ATTR_avx512
#endif

/* Element types: X(isa, suffix, C type, NumPy name, same-width unsigned int, exponent
 * mask, sqrt, fabs). */
#define FA_DTYPES(X, ISA)                                                            \
    X(ISA, f32, float, "float32", uint32_t, UINT32_C(0x7f800000), sqrtf, fabsf)      \
    X(ISA, f64, double, "float64", uint64_t, UINT64_C(0x7ff0000000000000), sqrt, fabs)

#define FA_ISA_ENUM(ISA) FA_ISA_##ISA,
enum { FA_ISAS(FA_ISA_ENUM) FA_N_ISAS };
#define FA_ISA_NAME(ISA) #ISA,
static const char *const fa_isa_names[FA_N_ISAS] = {FA_ISAS(FA_ISA_NAME)};

#define FA_DTYPE_ENUM(ISA, SFX, T, NAME, ...) FA_DTYPE_##SFX,
enum { FA_DTYPES(FA_DTYPE_ENUM, ~) FA_N_DTYPES };
#define FA_DTYPE_NAME(ISA, SFX, T, NAME, ...) NAME,
static const char *const fa_dtype_names[FA_N_DTYPES] = {FA_DTYPES(FA_DTYPE_NAME, ~)};

/* Instantiate every loop of one (instruction set, element type). */
#define FA_DEFINE_KIND(name, body, coupled, flag, ISA, SFX, T, SQRT, FABS)           \
    FA_ATTR_##ISA static void fa_##name##_##SFX##_##ISA(char *const *a, ptrdiff_t n, \
                                                        const fa_scalars *s)         \
        body(T, SQRT, FABS, coupled, flag)
#define FA_DEFINE_DTYPE(ISA, SFX, T, NAME, UT, EXP, SQRT, FABS)                      \
    FA_DENSE_KINDS(FA_DEFINE_KIND, ISA, SFX, T, SQRT, FABS)                          \
    FA_ATTR_##ISA static ptrdiff_t fa_scan_##SFX##_##ISA(const void *grad, ptrdiff_t n) \
        FA_SCAN_BODY(UT, EXP)                                                        \
    FA_ATTR_##ISA static FA_SPARSE_ROW_SIG(fa_sparse_row_##SFX##_##ISA)              \
        FA_SPARSE_ROW_BODY(T, SQRT)                                                  \
    FA_ATTR_##ISA static FA_SPARSE_SUM_SIG(fa_sparse_sum_##SFX##_##ISA)              \
        FA_SPARSE_SUM_BODY(T)
#define FA_DEFINE_ISA(ISA) FA_DTYPES(FA_DEFINE_DTYPE, ISA) FA_DEFINE_CONVERT(ISA) FA_DEFINE_Q8(ISA) \
    FA_DEFINE_STAGED(ISA) FA_DEFINE_NORMS(ISA)
FA_ISAS(FA_DEFINE_ISA)

/* The table. */
typedef void (*fa_staged_fn)(fa_loop_fn dense, const fa_segment *x, ptrdiff_t n,
                             const fa_scalars *s, const fa_pre *pre);
typedef struct {
    fa_loop_fn dense[FA_N_KINDS];
    fa_staged_fn staged;
    fa_scan_fn scan;
    fa_row_fn sparse_row;
    fa_sum_fn sparse_sum;
} fa_loops;

#define FA_KIND_PTR(name, body, coupled, flag, ISA, SFX) fa_##name##_##SFX##_##ISA,
#define FA_TABLE_CELL(ISA, SFX, ...)                                                 \
    {{FA_DENSE_KINDS(FA_KIND_PTR, ISA, SFX)}, fa_staged_##SFX##_##ISA,               \
     fa_scan_##SFX##_##ISA, fa_sparse_row_##SFX##_##ISA, fa_sparse_sum_##SFX##_##ISA},
#define FA_TABLE_ROW(ISA) {FA_DTYPES(FA_TABLE_CELL, ISA)},
static const fa_loops fa_table[FA_N_ISAS][FA_N_DTYPES] = {FA_ISAS(FA_TABLE_ROW)};

/* The gradient scans of every storage type (FA_ET_*): the non-finite scan, the scan that
 * also sums the squares (for max_grad_norm), and the check of the unscaled values (for
 * grad_scale < 1, where unscaling can overflow). */
typedef struct {
    fa_scan_fn scan;
    fa_norm_fn norm;
    fa_unscaled_fn unscaled;
} fa_grad_fns;
#define FA_GRAD_CELL(ISA, SFX) {fa_scan_##SFX##_##ISA, fa_norm_##SFX##_##ISA, fa_unscaled_##SFX##_##ISA}
#define FA_GRAD_ROW(ISA)                                                             \
    {FA_GRAD_CELL(ISA, f32), FA_GRAD_CELL(ISA, f64), FA_GRAD_CELL(ISA, bf16),          \
     FA_GRAD_CELL(ISA, f16)},
static const fa_grad_fns fa_grad_table[FA_N_ISAS][FA_N_ETS] = {FA_ISAS(FA_GRAD_ROW)};
static const fa_grad_fns *fa_get_grad_fns(int isa, int type) { return &fa_grad_table[isa][type]; }

/* The widest instruction set this CPU runs, as an FA_ISA_* value. */
#if FA_HAVE_ARM_DISPATCH
#include <sys/auxv.h>
#define FA_HWCAP_SVE (1UL << 22) /* HWCAP_SVE of the Linux arm64 ABI (asm/hwcap.h) */
#endif
static int fa_cpu_best_isa(void) {
#if FA_HAVE_X86_DISPATCH
    __builtin_cpu_init();
    /* the avx2 and avx512 rows' 8-bit state loops use F16C (_q8.h), which every CPU
     * with AVX2 has; a virtual CPU that hides it gets the baseline row */
    if (!__builtin_cpu_supports("f16c")) return FA_ISA_baseline;
    if (__builtin_cpu_supports("avx512f")) return FA_ISA_avx512;
    if (__builtin_cpu_supports("avx2")) return FA_ISA_avx2;
#elif FA_HAVE_ARM_DISPATCH
    if (getauxval(AT_HWCAP) & FA_HWCAP_SVE) return FA_ISA_sve;
    return FA_ISA_neon;
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
    return FA_ISA_neon;
#endif
    return FA_ISA_baseline;
}

static const fa_loops *fa_get_loops(int isa, int dtype) { return &fa_table[isa][dtype]; }

#endif /* FUSEDADAM_DISPATCH_H */
