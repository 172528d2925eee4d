#!/usr/bin/env python3
"""Check that a built fusedadam extension runs no instruction beyond the architecture's
baseline outside the functions compiled for a wider instruction set, and that no loop
fuses a multiply-add (one rounding where the NumPy reference rounds twice).

The loops of ``_loops.h`` are compiled three times, with ``target("avx2")`` and
``target("avx512f")`` attributes for the wide copies (functions named ``*_avx2``,
``*_avx512``), and the module picks one at run time from CPUID. Everything else (the
Cython module, the OpenMP glue, libgcc's CPU probe) must be baseline x86-64 (SSE2), or a
CPU without AVX would die with SIGILL on import. This script disassembles the module
(``objdump -d``) and fails if any AVX/AVX-512 (VEX/EVEX, ymm/zmm/k registers) or
post-SSE2 instruction (SSE3, SSSE3, SSE4, POPCNT, BMI, ...) appears in another function,
or any FMA instruction (vfmadd...) anywhere.

aarch64 modules (``aarch64-linux-gnu-objdump`` on another host) get the Arm rules: SVE
instructions (z/p registers, VL-scaled counts) only inside the ``*_sve`` loop copies
(chosen at run time when the kernel reports SVE), Advanced SIMD vector code in the
``*_neon`` copies, and no fused multiply-add (fmla, fmadd, fmad, fnmsub, ...) anywhere:
the build's ``-ffp-contract=off`` must hold in every row.

Usage: python tools/check_isa.py WHEEL_OR_SO [...]
"""

import collections
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

# Functions allowed to hold wide instructions: the per-ISA loop copies (and the .part /
# .cold / .constprop clones gcc may split them into).
WIDE_FUNCTION = re.compile(r"_(avx2|avx512)(?=$|[._])")

# Instructions newer than x86-64's SSE2 baseline, by mnemonic (AT&T, as objdump prints).
POST_SSE2 = set(
    """
addsubpd addsubps haddpd haddps hsubpd hsubps lddqu movddup movshdup movsldup fisttp
fisttps fisttpl fisttpll monitor mwait
pabsb pabsw pabsd palignr phaddw phaddd phaddsw phsubw phsubd phsubsw pmaddubsw pmulhrsw
pshufb psignb psignw psignd
blendpd blendps blendvpd blendvps dppd dpps extractps insertps movntdqa mpsadbw packusdw
pblendvb pblendw pcmpeqq pextrb pextrd pextrq phminposuw pinsrb pinsrd pinsrq pmaxsb
pmaxsd pmaxud pmaxuw pminsb pminsd pminud pminuw pmovsxbw pmovsxbd pmovsxbq pmovsxwd
pmovsxwq pmovsxdq pmovzxbw pmovzxbd pmovzxbq pmovzxwd pmovzxwq pmovzxdq pmuldq pmulld
ptest roundpd roundps roundsd roundss
pcmpestri pcmpestrm pcmpistri pcmpistrm pcmpgtq crc32 crc32b crc32w crc32l crc32q
popcnt popcntw popcntl popcntq lzcnt lzcntl lzcntq tzcnt tzcntl tzcntq
andn bextr blsi blsmsk blsr bzhi mulx pdep pext rorx sarx shlx shrx movbe adcx adox
""".split()
)
WIDE_REGISTER = re.compile(r"%(ymm|zmm)\d+|%k[0-7]\b")
HEADER = re.compile(r"^[0-9a-f]+ <(?P<name>[^>]+)>:$")
INSN = re.compile(
    r"^\s*[0-9a-f]+:\s+(?:(?:rex\.?\w*|lock|rep[a-z]*|data16|notrack|bnd|cs|ds)\s+)*"
    r"(?P<mnemonic>[a-z][a-z0-9.]*)\s*(?P<operands>.*)$"
)


# Fused multiply-adds of x86 (FMA3/FMA4) and AArch64 (scalar, Advanced SIMD, SVE, BF16).
X86_FMA = re.compile(r"^vf(n?m(add|sub|addsub|subadd))")
ARM_FMA = set(
    """
fmadd fmsub fnmadd fnmsub fmla fmls fmlal fmlal2 fmlsl fmlsl2 fmad fmsb fnmad fnmsb fnmla
fnmls fcmla bfmlalb bfmlalt bfmmla bfdot bfmlal bfmlsl
""".split()
)
ARM_INSN = re.compile(r"^\s*[0-9a-f]+:\s+(?P<mnemonic>[a-z][a-z0-9.]*)\s*(?P<operands>.*)$")
# SVE: an operand in a z (vector) or p (predicate) register, or a vector-length count.
SVE_OPERAND = re.compile(r"(?<![\w<+])[zp]\d+(\.[bhsdq]|/[mz]|\b)")
SVE_ONLY = set(
    """
cntb cnth cntw cntd incb inch incw incd decb dech decw decd addvl addpl rdvl setffr rdffr
wrffr sqincb sqinch sqincw sqincd uqincb uqinch uqincw uqincd sqdecb sqdech sqdecw sqdecd
uqdecb uqdech uqdecw uqdecd
""".split()
)
ADVSIMD_OPERAND = re.compile(r"\bv\d+\.\d*[bhsd]\b")
ARM_ROW = re.compile(r"_(baseline|neon|sve)(?=$|[._])")


def is_beyond_baseline(mnemonic, operands):
    base = mnemonic.split(".")[0]
    if base.startswith("v") and base not in {"verr", "verw"}:
        return True  # VEX/EVEX encoded: AVX or AVX-512
    if WIDE_REGISTER.search(operands):
        return True
    return base in POST_SSE2


def shared_objects(path, tmp):
    path = pathlib.Path(path)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            names = [
                n
                for n in wheel.namelist()
                if n.startswith("fusedadam/") and n.endswith((".so", ".pyd"))
            ]
            if not names:
                raise SystemExit(f"{path}: no compiled fusedadam module inside")
            for name in names:
                wheel.extract(name, tmp)
                yield pathlib.Path(tmp) / name
    else:
        yield path


def check(so):
    objdump = shutil.which("objdump")
    with open(so, "rb") as f:
        machine = f.read(20)[18:20]
    if machine == b"\xb7\x00" and platform.machine() not in ("aarch64", "arm64"):
        # an aarch64 module on another host: the cross binutils
        objdump = shutil.which("aarch64-linux-gnu-objdump")
        if objdump is None:
            raise SystemExit(
                "aarch64-linux-gnu-objdump not found (Debian: apt-get install "
                "binutils-aarch64-linux-gnu)"
            )
    if objdump is None:
        raise SystemExit("objdump not found (Debian: apt-get install binutils)")
    text = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", "-w", str(so)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "file format elf64-littleaarch64" in text[:2000]:
        return check_aarch64(so, text)
    if "file format elf64-x86-64" not in text[:2000]:
        print(
            f"{so.name}: neither an x86-64 nor an aarch64 ELF module: nothing to check "
            "(the per-ISA loops are compiled on x86-64 and aarch64 only)"
        )
        return True
    function = None
    wide_inside = collections.Counter()  # wide instructions per ISA inside wide functions
    offending = collections.defaultdict(list)
    fused = collections.defaultdict(list)
    n_functions = n_wide_functions = n_insns = 0
    for line in text.splitlines():
        header = HEADER.match(line)
        if header:
            function = header.group("name")
            n_functions += 1
            n_wide_functions += bool(WIDE_FUNCTION.search(function))
            continue
        insn = INSN.match(line)
        if not insn or function is None:
            continue
        n_insns += 1
        mnemonic, operands = insn.group("mnemonic"), insn.group("operands")
        if X86_FMA.match(mnemonic):
            fused[function].append(f"{mnemonic} {operands}".strip())
        if not is_beyond_baseline(mnemonic, operands):
            continue
        wide = WIDE_FUNCTION.search(function)
        if wide:
            wide_inside[wide.group(1)] += 1
        else:
            offending[function].append(f"{mnemonic} {operands}".strip())
    print(
        f"{so.name}: {n_insns} instructions in {n_functions} functions; "
        f"{n_wide_functions} per-ISA loop functions hold "
        f"{sum(wide_inside.values())} wide instructions ({dict(wide_inside)})"
    )
    ok = True
    if n_wide_functions == 0:
        print(
            "  FAIL: no *_avx2/*_avx512 symbols found: stripped module, or the wide "
            "loops are missing; cannot attribute instructions"
        )
        ok = False
    if not wide_inside.get("avx2") or not wide_inside.get("avx512"):
        print("  FAIL: the AVX2 and AVX-512 loop copies should hold wide instructions")
        ok = False
    for function, insns in sorted(offending.items()):
        ok = False
        print(
            f"  FAIL: {function}: {len(insns)} instruction(s) beyond x86-64 baseline, "
            f"e.g. {insns[:3]}"
        )
    for function, insns in sorted(fused.items()):
        ok = False
        print(f"  FAIL: {function}: {len(insns)} fused multiply-add(s), e.g. {insns[:3]}")
    if ok:
        print(
            "  OK: nothing beyond x86-64 baseline (SSE2) outside *_avx2/*_avx512; "
            "no fused multiply-add"
        )
    return ok


def check_aarch64(so, text):
    """The Arm rules (module docstring) on an aarch64 module's disassembly."""
    function = None
    per_row = collections.Counter()  # functions of each row
    sve_in = collections.Counter()  # SVE instructions per row
    simd_in = collections.Counter()  # Advanced SIMD vector instructions per row
    offending = collections.defaultdict(list)
    fused = collections.defaultdict(list)
    n_functions = n_insns = 0
    for line in text.splitlines():
        header = HEADER.match(line)
        if header:
            function = header.group("name")
            n_functions += 1
            row = ARM_ROW.search(function)
            per_row[row.group(1) if row else None] += 1
            continue
        insn = ARM_INSN.match(line)
        if not insn or function is None:
            continue
        n_insns += 1
        mnemonic, operands = insn.group("mnemonic"), insn.group("operands")
        row = ARM_ROW.search(function)
        row = row.group(1) if row else None
        if mnemonic.split(".")[0] in ARM_FMA:
            fused[function].append(f"{mnemonic} {operands}".strip())
        if mnemonic in SVE_ONLY or SVE_OPERAND.search(operands):
            if row == "sve":
                sve_in[row] += 1
            elif not function.startswith("__aarch64_"):  # libgcc's outline atomics
                offending[function].append(f"{mnemonic} {operands}".strip())
        elif ADVSIMD_OPERAND.search(operands):
            simd_in[row] += 1
    print(
        f"{so.name} (aarch64): {n_insns} instructions in {n_functions} functions; "
        f"loop functions per row {dict((k, v) for k, v in per_row.items() if k)}; "
        f"SVE instructions in the sve row: {sve_in['sve']}; Advanced SIMD vector "
        f"instructions per row: {dict((k, v) for k, v in simd_in.items() if k)}"
    )
    ok = True
    if not (per_row["baseline"] and per_row["neon"] and per_row["sve"]):
        print("  FAIL: no *_baseline/*_neon/*_sve symbols: stripped module, or a row is missing")
        ok = False
    if not sve_in["sve"]:
        print("  FAIL: the sve loop copies hold no SVE instruction (not compiled for SVE)")
        ok = False
    if not simd_in["neon"]:
        print("  FAIL: the neon loop copies hold no Advanced SIMD vector instruction")
        ok = False
    for function, insns in sorted(offending.items()):
        ok = False
        print(
            f"  FAIL: {function}: {len(insns)} SVE instruction(s) outside *_sve, e.g. {insns[:3]}"
        )
    for function, insns in sorted(fused.items()):
        ok = False
        print(f"  FAIL: {function}: {len(insns)} fused multiply-add(s), e.g. {insns[:3]}")
    if ok:
        print("  OK: SVE only inside *_sve; no fused multiply-add anywhere")
    return ok


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for arg in argv:
            for so in shared_objects(arg, tmp):
                ok &= check(so)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
