"""The engine compiled to WebAssembly (wasm.c: the runner's unity build with exports instead of
a main), built on first use into the kernel cache, never at import, like every native part
(`tilelli.kernels.build.built`).

The compiler is the clang inside PyPI's `ziglang` (`pip install -e ".[web]"`): one pip
package that brings a current clang and WASI libc for wasm32, where Debian's clang 14 lacks
the one instruction the integer path wants (below) and builds code ~12 % slower.

Two modules from one source, the page takes the first its browser accepts:
- engine-relaxed.wasm: relaxed SIMD. The integer path's 16-byte dot product is one
  instruction (`i32x4.relaxed_dot_i8x16_i7x16_add`, pmaddubsw + pmaddwd on x86, sdot on Arm),
  where SIMD128 needs widening multiplies and adds: ~1.5x the decode speed. Its results are the
  baseline's bit for bit: the dot's operands are weight codes 0..2 and int8 inputs, where every
  engine computes the same exact sum, and it is built with -ffp-contract=off, so that clang does
  not fuse float multiply-adds into relaxed_madd (fused or not as the machine pleases).
- engine.wasm: SIMD128 only, for browsers without relaxed SIMD.
SIMD128 runs engine.c's portable vector branch (GCC/Clang vector types, lowered to pairs of
128-bit registers); `-fopenmp-simd` lets clang vectorise its `omp simd` loops; one thread, no
OpenMP runtime. The module imports three WASI calls that the worker stubs: it reads no files
and writes nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tilelli.errors import TilelliError
from tilelli.infer.runner import ENGINE_PARTS, HERE
from tilelli.kernels.build import MAX_TOP_K, built

COMPILER = [sys.executable, "-m", "ziglang", "cc"]
MISSING = ('--web needs the WebAssembly compiler (ziglang: a clang with WASI libc, from PyPI): '
           'pip install -e ".[web]" in the repository')
FLAGS = ["--target=wasm32-wasi", "-O3", "-msimd128", "-mexec-model=reactor", "-fopenmp-simd", "-std=c11",
         f"-DMAX_TOP_K={MAX_TOP_K}", f"-I{HERE}", "-Wl,--strip-all"]
MODULES = {"engine.wasm": ["-ffp-contract=fast"],  # (SIMD128 has no fused multiply-add to contract into)
           "engine-relaxed.wasm": ["-mrelaxed-simd", "-ffp-contract=off"]}


def available() -> bool:
    return importlib.util.find_spec("ziglang") is not None


def build_wasm() -> dict[str, Path]:
    """{file name in the site: built module}, built now if the cache lacks them; a TilelliError
    saying what to install when the compiler is missing."""
    if not available():
        raise TilelliError(MISSING)
    try:
        here = Path(__file__).parent
        return {name: built(name.removesuffix(".wasm"), [here / "wasm.c", *ENGINE_PARTS],
                            [*COMPILER, *FLAGS, *flags], ".wasm", ["-lm"])
                for name, flags in MODULES.items()}
    except RuntimeError as e:
        raise TilelliError(f"{MISSING} ({e})") from None
