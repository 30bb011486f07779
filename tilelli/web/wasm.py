"""The engine compiled to WebAssembly (wasm.c: the runner's unity build with exports instead of
a main), with Debian's clang and WASI libc; built on first use into the kernel cache, never at
import, like every native part (`tilelli.kernels.build.built`).

SIMD128 runs engine.c's portable vector branch (GCC/Clang vector types, lowered to pairs of
128-bit registers); `-fopenmp-simd` lets clang vectorise its `omp simd` loops too; one thread,
no OpenMP runtime. The module imports three WASI calls that the worker stubs: it reads no files
and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from tilelli.errors import TilelliError
from tilelli.infer.runner import ENGINE_PARTS, HERE
from tilelli.kernels.build import MAX_TOP_K, built

COMPILER = "clang"
SYSROOT = Path("/usr/include/wasm32-wasi")
PACKAGES = "clang lld wasi-libc libclang-rt-14-dev-wasm32"  # Debian's, for --target=wasm32-wasi
FLAGS = ["--target=wasm32-wasi", "-isystem", str(SYSROOT), "-L/usr/lib/wasm32-wasi", "-O3", "-msimd128",
         "-mexec-model=reactor", "-fopenmp-simd", "-ffp-contract=fast", "-std=c11", f"-DMAX_TOP_K={MAX_TOP_K}",
         f"-I{HERE}"]


def build_wasm() -> Path:
    """engine.wasm (built now if the cache lacks it); a TilelliError naming the packages to
    install when the toolchain is missing."""
    missing = f"--web needs clang with a WebAssembly C library: apt-get install {PACKAGES}"
    if not SYSROOT.is_dir():
        raise TilelliError(missing)
    try:
        here = Path(__file__).parent
        return built("engine", [here / "wasm.c", *ENGINE_PARTS], [COMPILER, *FLAGS], ".wasm",
                     ["-lm"])
    except FileNotFoundError:
        raise TilelliError(missing) from None
    except RuntimeError as e:
        raise TilelliError(f"{missing} ({e})") from None
