"""The standalone runner (runner.c): built from the engine's own source, like the library.

The runner and the WebAssembly module (tilelli/web/wasm.c) are unity builds: one file that
includes ENGINE_PARTS, so there is one engine, one loader, one generation loop and one chat
decision in C, whichever program runs them. Built on first use into the kernel cache
(`tilelli.kernels.build.built`), with the flags the Python-hosted engine is built with, so the
runner computes the same numbers; without OpenMP where the compiler has none.
"""

from __future__ import annotations

from pathlib import Path

from tilelli.errors import TilelliError
from tilelli.kernels.build import COMPILER, built, code_flags

HERE = Path(__file__).parent
RUNNER = "tilelli-run"  # the binary's name in an export
ENGINE_PARTS = [HERE / name for name in ("engine.c", "model_file.c", "decode.c", "chat.c")]  # in include order


def build_runner() -> Path:
    """The runner executable (built now if the cache lacks it)."""
    sources = [HERE / "runner.c", *ENGINE_PARTS]
    try:
        try:
            return built(RUNNER, sources, [COMPILER, *code_flags()], "", ["-lm"])
        except RuntimeError:  # no OpenMP here: one thread
            return built(RUNNER, sources, [COMPILER, *(f for f in code_flags() if f != "-fopenmp")], "",
                         ["-lm"])
    except FileNotFoundError:
        raise TilelliError(f"--native needs a C compiler ('{COMPILER}'); install one (Debian: apt-get install "
                           "gcc)") from None
    except RuntimeError as e:
        raise TilelliError(f"the runner did not compile: {e}") from None
