#!/usr/bin/env python3
"""Instructions executed per element by the main loops of every row, counted under qemu.

Without Arm hardware the honest speed figure is the instruction count: this compiles a
small harness around src/fusedadam/_dispatch.h (the build's flags), runs one call of a
loop on 4096 elements under qemu-user with its translation log (``-d in_asm,exec,nochain``:
every executed translation block and its instructions), and divides the instructions
executed between two marker calls by the element count. Cases: Adam on float32 and on
float64 (the dense loop), Adam on bfloat16 params, gradients and state (the staged runner:
widen, float32 loop on the master, round back), Adam with 8-bit state (decode, loop,
absmax, encode), and the non-finite scan and the norm of float32 gradients.

Rows: aarch64 baseline, neon, and sve at 128, 256 and 512-bit vectors (qemu-aarch64
-cpu max,sve-max-vq=N); x86-64 baseline and avx2 (qemu-x86_64 -cpu max; qemu has no
AVX-512). An instruction count is not a time: wide vectors, division and square-root
throughput, and memory bandwidth decide the real speed (docs/platforms.md has the
benchmark to run on Arm hardware).

Usage: python tools/loop_insn_counts.py [--markdown]
Needs aarch64-linux-gnu-gcc, gcc, qemu-aarch64 and qemu-x86_64 (tools/check_aarch64.sh
installs them).
"""

import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-w"]
N = 4096

HARNESS = r"""
#include "_dispatch.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
__attribute__((noinline)) void fa_mark(int i) { __asm__ volatile("" ::: "memory"); (void)i; }
int main(int argc, char **argv)
{
    const int isa = atoi(argv[1]), which = atoi(argv[2]);
    const ptrdiff_t n = NELEM;
    float *p = calloc(n, 4), *g = calloc(n, 4), *m = calloc(n, 4), *v = calloc(n, 4);
    double *pd = calloc(n, 8), *gd = calloc(n, 8), *md = calloc(n, 8), *vd = calloc(n, 8);
    uint16_t *pb = calloc(n, 2), *gb = calloc(n, 2), *mb = calloc(n, 2), *vb = calloc(n, 2);
    uint8_t *mq = calloc(n, 1), *vq = calloc(n, 1);
    float ms[NELEM / FA_Q8_BLOCK], vs[NELEM / FA_Q8_BLOCK];
    for (ptrdiff_t i = 0; i < n; i++) {
        p[i] = 1 + i * 1e-3f, g[i] = 0.5f - i * 1e-4f, m[i] = 1e-2f, v[i] = 1e-3f;
        pd[i] = p[i], gd[i] = g[i], md[i] = m[i], vd[i] = v[i];
        pb[i] = fa_f32_to_bf16(p[i]), gb[i] = fa_f32_to_bf16(g[i]);
        mb[i] = fa_f32_to_bf16(m[i]), vb[i] = fa_f32_to_bf16(v[i]);
        mq[i] = (uint8_t)(i % 200), vq[i] = (uint8_t)(i % 230);
    }
    for (int b = 0; b < NELEM / FA_Q8_BLOCK; b++) ms[b] = 0.02f, vs[b] = 0.004f;
    fa_scalars s = {1.0, 0.0, 1.0, 0.9, 0.1, 0.999, 0.001, 1e-3, 1e-8, 0.0, 0.0};
    fa_pre pre;
    fa_pre_set(&pre, 1.0);
    const fa_loops *L32 = fa_get_loops(isa, FA_DTYPE_f32), *L64 = fa_get_loops(isa, FA_DTYPE_f64);
    char *a[5] = {(char *)p, (char *)g, (char *)m, (char *)v, 0};
    char *ad[5] = {(char *)pd, (char *)gd, (char *)md, (char *)vd, 0};
    fa_segment x;
    memset(&x, 0, sizeof x);
    x.param = (char *)p, x.n_states = 2, x.qsigned[0] = 1, x.qsigned[1] = 0;
    double sumsq = 0;
    fa_mark(0);
    switch (which) {
    case 0: L32->dense[FA_KIND_adam](a, n, &s); break;
    case 1: L64->dense[FA_KIND_adam](ad, n, &s); break;
    case 2: /* bfloat16 param (float32 master), gradient and state */
        x.lowp = (char *)pb, x.grad = (const char *)gb, x.state[0] = (char *)mb;
        x.state[1] = (char *)vb, x.grad_type = FA_ET_BF16, x.state_type = FA_ET_BF16;
        x.lowp_type = FA_ET_BF16;
        L32->staged(L32->dense[FA_KIND_adam], &x, n, &s, &pre);
        break;
    case 3: /* float32 param and gradient, 8-bit state */
        x.grad = (const char *)g, x.state[0] = (char *)mq, x.state[1] = (char *)vq;
        x.scale[0] = ms, x.scale[1] = vs, x.grad_type = FA_ET_F32, x.state_type = FA_ET_Q8;
        x.lowp_type = -1;
        L32->staged(L32->dense[FA_KIND_adam], &x, n, &s, &pre);
        break;
    case 4: fa_get_grad_fns(isa, FA_ET_F32)->scan(g, n); break;
    case 5: fa_get_grad_fns(isa, FA_ET_F32)->norm(g, n, &sumsq); break;
    }
    fa_mark(1);
    printf("%g %g\n", p[7], sumsq);
    return 0;
}
"""
CASES = ["Adam f32", "Adam f64", "Adam bf16 (staged)", "Adam 8-bit state", "scan f32", "norm f32"]
# (label, compiler, qemu, cpu, row index)
ROWS = [
    ("aarch64 baseline", "aarch64", "max,sve=off", 0),
    ("aarch64 neon", "aarch64", "max,sve=off", 1),
    ("aarch64 sve 128", "aarch64", "max,sve-max-vq=1", 2),
    ("aarch64 sve 256", "aarch64", "max,sve-max-vq=2", 2),
    ("aarch64 sve 512", "aarch64", "max,sve-max-vq=4", 2),
    ("x86-64 baseline (SSE2)", "x86_64", "max", 0),
    ("x86-64 avx2", "x86_64", "max", 1),
]
TB_LINE = re.compile(r"^0x([0-9a-f]+):")
TRACE = re.compile(r"^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")


def count(log):
    """Guest instructions executed between the two fa_mark calls."""
    sizes, pc, n = {}, None, 0
    marks, total = 0, 0
    for line in log.splitlines():
        if line.startswith("IN:"):
            if pc is not None:
                sizes[pc] = n
            pc, n = None, 0
            continue
        m = TB_LINE.match(line)
        if m:
            if pc is None:
                pc = int(m.group(1), 16)
            n += 1
            continue
        if pc is not None and not line.strip():
            sizes[pc] = n
            pc = None
        t = TRACE.match(line)
        if t:
            if re.search(r"\] fa_mark(\.|$)", line.rstrip()):
                marks += 1
                continue
            if marks == 1:
                total += sizes[int(t.group(1), 16)]
    if marks < 2:
        raise RuntimeError("markers not found in the qemu log")
    return total


def main(argv):
    markdown = "--markdown" in argv
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "h.c").write_text(HARNESS.replace("NELEM", str(N)))
        exe = {}
        for arch, cc in (("aarch64", "aarch64-linux-gnu-gcc"), ("x86_64", "gcc")):
            exe[arch] = tmp / f"h_{arch}"
            subprocess.run(
                [
                    cc,
                    *FLAGS,
                    "-I",
                    str(ROOT / "src" / "fusedadam"),
                    str(tmp / "h.c"),
                    "-o",
                    str(exe[arch]),
                    "-lm",
                ],
                check=True,
            )
        table = []
        for label, arch, cpu, row in ROWS:
            counts = []
            for case in range(len(CASES)):
                log = tmp / "log.txt"
                qemu = [f"qemu-{arch}", "-cpu", cpu, "-d", "in_asm,exec,nochain", "-D", str(log)]
                if arch == "aarch64":
                    qemu[1:1] = ["-L", "/usr/aarch64-linux-gnu"]
                subprocess.run(
                    [*qemu, str(exe[arch]), str(row), str(case)], check=True, capture_output=True
                )
                counts.append(count(log.read_text(errors="replace")) / N)
                log.unlink()
            table.append((label, counts))
    if markdown:
        print("| row | " + " | ".join(CASES) + " |")
        print("|---|" + "---:|" * len(CASES))
        for label, counts in table:
            print(f"| {label} | " + " | ".join(f"{c:.2f}" for c in counts) + " |")
    else:
        print(f"instructions executed per element ({N} elements, one call):")
        print(f"{'row':24s}" + "".join(f"{c:>20s}" for c in CASES))
        for label, counts in table:
            print(f"{label:24s}" + "".join(f"{c:20.2f}" for c in counts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
