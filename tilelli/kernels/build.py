"""Build and load the native kernels: one C file each, compiled with `cc` on first use.

A kernel module declares `library = NativeLibrary(name, source, declare, what)` and asks
`library.available()` before each use (never at import). The first time, the source is compiled
(`built`) into `$TILELLI_CACHE/kernels` (default `~/.cache/tilelli/kernels`) under a name that
hashes the source, the compiler, the flags and the CPU, and loaded with ctypes; `declare(lib)` sets the signatures.
Without a compiler, or if the build fails, `available()` stays False and callers use PyTorch;
that is said in one `tilelli: note:` line on stderr (see `note`), once per process for a missing
compiler and once per kernel for a failed build. `TILELLI_NO_KERNEL=1` or
`with kernel_disabled():` turns every kernel off (silently: that is a choice, not a fallback).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the build machinery itself stays torch-free: the inference engine uses it without torch
    import torch

COMPILER = "cc"
# The most keys a top-k attention query keeps in the native code (the training kernel and the
# inference engine size their per-query buffers with it); a larger top_k runs on PyTorch.
MAX_TOP_K = 256
# IEEE arithmetic (no -ffast-math); `omp simd` reductions may reorder sums, contraction may fuse.
# CODE_FLAGS decide the numbers (every build of the engine, the runner included, passes them).
CODE_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-std=c11", f"-DMAX_TOP_K={MAX_TOP_K}"]
USER_FLAGS = "TILELLI_CFLAGS"  # more flags for every native build, e.g. "-mno-avx512f"


def code_flags() -> list[str]:
    """CODE_FLAGS, then $TILELLI_CFLAGS: e.g. "-mno-avx512f" builds what an AVX2-only CPU runs,
    on this one, to measure it (studies/speed/peers.py records the flags beside its figures)."""
    try:
        return [*CODE_FLAGS, *shlex.split(os.environ.get(USER_FLAGS, ""))]
    except ValueError as e:  # a build failure: the kernels fall back to PyTorch, the runner says why
        raise RuntimeError(f"{USER_FLAGS}: {e}") from None

_disabled = 0
_noted: set[str] = set()  # the notes said so far in this process


def note(message: str) -> None:
    """Say `tilelli: note: MESSAGE` on stderr, once per process per message.

    A kernel fallback changes speed, not results, so it is a note for the user, not a Python
    warning with a source line (which reads like a bug report and repeats per call site).
    """
    if message in _noted:
        return
    _noted.add(message)
    print(f"tilelli: note: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    root = os.environ.get("TILELLI_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tilelli") / "kernels"


def enabled() -> bool:
    """False inside `kernel_disabled()` or with TILELLI_NO_KERNEL set (to anything but 0)."""
    return not _disabled and os.environ.get("TILELLI_NO_KERNEL", "") in ("", "0")


@contextlib.contextmanager
def kernel_disabled() -> Iterator[None]:
    """Use the PyTorch paths inside this block (the reference in tests and benchmarks)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def contiguous_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its last dimension is contiguous, else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def built(name: str, sources: Sequence[Path], command: Sequence[str], suffix: str, libs: Sequence[str] = ()) -> Path:
    """`command -o OUT sources[0] libs` (a compiler and its flags) run once into the cache: OUT
    is named by a hash of every source's text (a unity build lists the files it includes), the
    command and the CPU, and written under a temporary name renamed into place, so concurrent
    builds are safe. Raises FileNotFoundError without the compiler, RuntimeError with the
    compiler's first error line when it fails."""
    key = "\0".join([*(p.read_text() for p in sources), *command, platform.machine(), _cpu_flags()])
    path = cache_dir() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}{suffix}"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([*command, "-o", tmp, str(sources[0]), *libs], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = proc.stderr.splitlines()
            first = next((ln for ln in lines if "error" in ln), lines[0] if lines else f"exit {proc.returncode}")
            raise RuntimeError(first.strip())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return path


class NativeLibrary:
    """One C source, built and loaded on first use; `declare(lib)` sets the ctypes signatures.

    `what` names the kernel in notes ("top-k attention"). `extra_flags` are added to code_flags() (tests
    build the same source for a smaller instruction set, e.g. "-mno-avx512f", to check every
    code path of a kernel against the others on one machine).
    """

    def __init__(self, name: str, source: Path, declare: Callable[[ctypes.CDLL], None], what: str,
                 extra_flags: tuple[str, ...] = ()):
        self.name, self.source, self.declare, self.what = name, source, declare, what
        self.extra_flags = extra_flags
        self._lib: ctypes.CDLL | None = None
        self._tried = False
        self._lock = threading.Lock()

    def load(self) -> ctypes.CDLL | None:
        """The loaded library, building it the first time; None (after one note) if that fails."""
        if self._tried:
            return self._lib
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    flags = [*code_flags(), "-fPIC", "-shared", *self.extra_flags]
                    path = built(self.name, [self.source], [COMPILER, *flags], ".so", ["-lm"])
                    lib = ctypes.CDLL(str(path))
                    self.declare(lib)
                    self._lib = lib
                except (OSError, RuntimeError, AttributeError) as e:
                    if isinstance(e, FileNotFoundError) and e.filename == COMPILER:  # one note for all kernels
                        note(f"native kernels unavailable (no C compiler '{COMPILER}'); "
                             "using the PyTorch paths (same results, slower)")
                    else:
                        note(f"{self.what} kernel unavailable ({e}); using the PyTorch path (same results, slower)")
        return self._lib

    def get(self) -> ctypes.CDLL:
        lib = self.load()
        if lib is None:
            raise RuntimeError(f"the {self.what} kernel could not be built; check available() first")
        return lib

    def available(self) -> bool:
        """True when kernels are enabled and this one is built (building it now if needed)."""
        return enabled() and self.load() is not None
