"""Tilelli's engine against llama.cpp on a model of the same size, in one process.

llama.cpp is the CPU engine people would otherwise use, and it has ternary types of its own
(TQ1_0, TQ2_0), so it is the peer that says whether Tilelli's decoding speed is worth a native
engine of its own. No trained llama.cpp model of Tilelli's size exists, and speed does not
depend on weight values, so this writes one with random weights (gguf): Llama-shaped, vocabulary
259 (256 bytes + 3 specials), d=256 x 12 layers, head_dim 64, FFN 768, 10.36 M parameters like
Tilelli's default model (10.35 M). Why not Tilelli's own d=320 x 8: llama.cpp's ternary and K
types pack rows in blocks of 256 weights and would fall back to Q4_0 on 320-wide rows. The BF16
file is quantized to Q8_0, Q4_0, TQ1_0 and TQ2_0 by llama.cpp's own quantizer (what a user of
llama.cpp runs; it picks the types of the embedding and output itself).

Every engine and model is measured through the same decoder interface and the same timing code
(tilelli/infer/bench.py): decode at batch 1 (a 16-byte prompt, then greedy bytes), prefill of a
512-byte prompt, 8 sequences decoding together (total bytes/s), each on 1 and 2 threads. Rounds:
one untimed warm-up pass, then `--repeats` rounds, each running every measurement once in a
shuffled order, the 1-minute load recorded at each round's start; the median over rounds is
reported. Peak RSS: a fresh process per model that loads it and decodes 64 bytes.

Needs the `peers` extra, built for this CPU:

    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF" pip install -e ".[peers]"   # no multimodal library
    python -m studies.speed.peers                    # writes results/peers.json, docs/results/peers.md
    python -m studies.speed.peers --repeats 3 --out /tmp/x --docs /tmp/x
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from studies.common import ROOT, add_output_args, publish, results_dir
from studies.common import VALID_TEXT as VALID
from studies.speed.decode_speed import MODELS
from tilelli import __version__
from tilelli.infer.bench import cpu_line, decode_rate, load_1min, machine, prefill_rate
from tilelli.model.checkpoint_files import SHIPPED_DIR

RESULTS = results_dir(__file__)
# The Llama shape (see the module doc); 3 specials first, then byte b is token b + 3.
SHAPE = {"vocab": 259, "d_model": 256, "n_layers": 12, "n_heads": 4, "head_dim": 64, "ffn": 768, "context": 2048}
SPECIALS = 3
TYPES = ("BF16", "Q8_0", "Q4_0", "TQ1_0", "TQ2_0")
QUANTS = ("Q8_0", "Q4_0", "TQ1_0", "TQ2_0")
TERNARY, FP32 = "tilelli-lite-ternary", ("tilelli-lite-fp32", "vanilla-fp32")
TERNARY_INT8 = f"{TERNARY} --int8"  # the same checkpoint on the engine's integer path (docs/engine.md)
THREADS = (1, 2)
BATCH = 8
PREFILL = 512
# (column key, measurement, threads); every column is bytes (= tokens) per second
COLUMNS = tuple((f"{kind}_{t}t", kind, t) for kind in ("decode_b1", "prefill", "batch8") for t in THREADS)
HEADINGS = {"decode_b1": "decode b1", "prefill": f"prefill {PREFILL}", "batch8": f"{BATCH} seqs (total)"}


def llama_params() -> int:
    """Parameters of the GGUF model: embedding, output, final norm, and per layer q/k/v/o, the
    gated FFN and two norms."""
    s = SHAPE
    d, ff = s["d_model"], s["ffn"]
    return 2 * s["vocab"] * d + d + s["n_layers"] * (4 * d * d + 3 * d * ff + 2 * d)


def write_gguf(path: Path, seed: int = 0) -> None:
    """The BF16 Llama model with random weights (speed does not depend on their values) and a
    byte vocabulary: llama.cpp wants a tokenizer, though the benchmark feeds token ids."""
    import gguf

    s, rng = SHAPE, np.random.default_rng(seed)
    d, ff, bf16 = s["d_model"], s["ffn"], gguf.GGMLQuantizationType.BF16
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(s["context"])
    w.add_embedding_length(d)
    w.add_block_count(s["n_layers"])
    w.add_feed_forward_length(ff)
    w.add_head_count(s["n_heads"])
    w.add_head_count_kv(s["n_heads"])
    w.add_rope_dimension_count(s["head_dim"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s["vocab"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)])
    w.add_token_scores([0.0] * s["vocab"])
    w.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                      + [gguf.TokenType.BYTE] * 256)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def matrix(name: str, rows: int, cols: int) -> None:  # numpy (rows, cols) = ggml ne (cols, rows)
        a = rng.normal(0.0, 0.02, (rows, cols)).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(a, bf16), raw_dtype=bf16)

    matrix("token_embd.weight", s["vocab"], d)
    for i in range(s["n_layers"]):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            matrix(f"blk.{i}.{part}.weight", d, d)
        matrix(f"blk.{i}.ffn_gate.weight", ff, d)
        matrix(f"blk.{i}.ffn_up.weight", ff, d)
        matrix(f"blk.{i}.ffn_down.weight", d, ff)
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(d, np.float32))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    matrix("output.weight", s["vocab"], d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src: Path, dst: Path, qtype: str) -> str | None:
    """llama.cpp's own quantizer (BF16 file -> `qtype`); None when it worked, else why not."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}", None)
    if ftype is None:
        return f"llama-cpp-python {llama_cpp.__version__} has no LLAMA_FTYPE_MOSTLY_{qtype}"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    return None if rc == 0 and dst.is_file() else f"llama_model_quantize returned {rc}"


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each type a GGUF file holds (llama.cpp picks some itself)."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


class LlamaSequence:
    def __init__(self, seq_id: int) -> None:
        self.seq_id, self.pos = seq_id, 0


class LlamaDecoder:
    """A llama.cpp model behind the decoder interface that tilelli/infer/bench.py times
    (new_sequence, forward(seqs, byte chunks) -> next-byte logits), through llama.cpp's low-level
    API: one llama_decode per call, however many sequences and bytes it carries, which is how
    llama.cpp's own server batches sequences. Logits are the 256 byte tokens', so that argmax is
    a byte as for Tilelli. The KV cache holds `max_tokens` positions shared by `n_seq` sequences
    (llama.cpp splits it evenly between them)."""

    def __init__(self, path: Path, threads: int, max_tokens: int = 8192, n_seq: int = BATCH) -> None:
        import llama_cpp

        self._ll, self._n_seq, self._next = llama_cpp, n_seq, 0
        llama_cpp.llama_backend_init()
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max = max_tokens, n_seq
        cp.n_batch = cp.n_ubatch = min(PREFILL, max_tokens)
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {path}")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(max(PREFILL, n_seq), 0, n_seq)
        self.threads = threads

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._threads = n
        self._ll.llama_set_n_threads(self._ctx, n, n)

    def new_sequence(self, max_len: int | None = None) -> LlamaSequence:
        """A fresh sequence in one of the context's n_seq slots (round robin), its cache cleared."""
        seq = LlamaSequence(self._next)
        self._next = (self._next + 1) % self._n_seq
        self._ll.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        return seq

    def forward(self, seqs: list[LlamaSequence], chunks: list[bytes]) -> np.ndarray:
        b, n, last = self._batch, 0, []
        for seq, chunk in zip(seqs, chunks, strict=True):
            for j, byte in enumerate(chunk):
                b.token[n], b.pos[n], b.n_seq_id[n] = byte + SPECIALS, seq.pos + j, 1
                b.seq_id[n][0] = seq.seq_id
                b.logits[n] = j == len(chunk) - 1
                n += 1
            seq.pos += len(chunk)
            last.append(n - 1)
        b.n_tokens = n
        rc = self._ll.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        vocab = SHAPE["vocab"]
        return np.stack([np.ctypeslib.as_array(self._ll.llama_get_logits_ith(self._ctx, i), (vocab,))[SPECIALS:]
                         for i in last])

    def close(self) -> None:
        self._ll.llama_batch_free(self._batch)
        self._ll.llama_free(self._ctx)
        self._ll.llama_model_free(self._model)


def open_decoder(kind: str, path: Path, threads: int, small: bool = False) -> Any:
    """`kind` "llama.cpp" (a GGUF file), "tilelli" (a checkpoint) or "tilelli-int8" (one on the
    integer path) as a decoder; `small`: one
    sequence and llama.cpp's smallest cache (256 positions), as Tilelli sizes a sequence's cache
    by its length, so that peak RSS compares the engines rather than cache sizes."""
    if kind == "llama.cpp":
        return LlamaDecoder(path, threads, max_tokens=256, n_seq=1) if small else LlamaDecoder(path, threads)
    from tilelli.infer.engine import NativeModel

    return NativeModel.load(path, threads=threads, int8=kind == "tilelli-int8")


def llama_build() -> dict[str, Any]:
    """Which llama.cpp ran and what its build enabled (llama.cpp's system info lists the
    instruction sets compiled in), so that a reader can tell a generic build from a native one."""
    import llama_cpp

    info: dict[str, Any] = {"llama_cpp_python": llama_cpp.__version__,
                            "system_info": llama_cpp.llama_print_system_info().decode().strip()}
    for lib in sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.so*")):
        ggml = ctypes.CDLL(str(lib))
        for name in ("ggml_version", "ggml_commit"):
            if hasattr(ggml, name):
                getattr(ggml, name).restype = ctypes.c_char_p
                info[name] = getattr(ggml, name)().decode()
    return info


def peak_rss_mb(kind: str, path: Path) -> float:
    """Peak RSS of a fresh Python process that loads the model (1 thread) and decodes 64 bytes:
    a fresh process, because this one holds every model at once."""
    out = subprocess.run([sys.executable, "-m", "studies.speed.peers", "--rss-child", kind, str(path)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def rss_child(kind: str, path: Path) -> None:
    """Prints this process's peak RSS in MB: VmHWM, which exec resets (ru_maxrss would start at
    the forking parent's size, ~700 MB here)."""
    decode_rate(open_decoder(kind, path, 1, small=True), 64)()
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024)


def measure(decoders: dict[str, Any], prompt: bytes, tokens: int, repeats: int,
            seed: int) -> tuple[dict[str, dict[str, list[float]]], list[float | None]]:
    """Every (model, column) once per round in a shuffled order, after one untimed pass; returns
    each one's rates (bytes/s) over the rounds, and the 1-minute load at each round's start."""
    runs = {"decode_b1": lambda d: decode_rate(d, tokens), "prefill": lambda d: prefill_rate(d, prompt),
            "batch8": lambda d: decode_rate(d, tokens, batch=BATCH)}
    tasks = [(name, col, kind, t) for name in decoders for col, kind, t in COLUMNS]
    rates: dict[str, dict[str, list[float]]] = {name: {col: [] for col, _, _ in COLUMNS} for name in decoders}
    loads = []
    rng = random.Random(seed)
    for round_ in range(repeats + 1):
        loads.append(load_1min())
        order = tasks[:]
        rng.shuffle(order)
        for name, col, kind, t in order:
            decoder = decoders[name]
            decoder.threads = t
            run = runs[kind](decoder)
            start = time.perf_counter()
            n = run()
            if round_:  # round 0 is the warm-up
                rates[name][col].append(n / (time.perf_counter() - start))
    return rates, loads[1:]


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per column: Tilelli ternary / the fastest llama.cpp quantized type, and each Tilelli FP32
    model (bf16 weights) / llama.cpp BF16; issue 26's targets are >= 1.5x and >= 1x."""
    out: dict[str, dict[str, Any]] = {}
    quants = [f"llama.cpp {q}" for q in QUANTS if rows[f"llama.cpp {q}"]["available"]]
    bf16 = rows["llama.cpp BF16"]
    for col, _, _ in COLUMNS:
        if quants:
            best = max(quants, key=lambda q: rows[q][col])
            for m in (TERNARY, TERNARY_INT8):
                out.setdefault(f"{m} / best llama.cpp quant", {})[col] = {
                    "ratio": rows[m][col] / rows[best][col], "best": best.removeprefix("llama.cpp ")}
        if bf16["available"]:
            for m in FP32:
                out.setdefault(f"{m} / llama.cpp BF16", {})[col] = {"ratio": rows[m][col] / bf16[col]}
    return out


def run(repeats: int, tokens: int, prompt: bytes, seed: int = 0) -> dict[str, Any]:
    """Build the GGUF files, then measure every available llama.cpp type and every shipped
    Tilelli checkpoint in this one process (see the module doc)."""
    result: dict[str, Any] = {"machine": machine(), "repeats": repeats, "decode_bytes": tokens,
                              "prefill_bytes": len(prompt), "batch": BATCH, "threads": list(THREADS),
                              "llama_cpp": llama_build(),
                              "llama_model": {**SHAPE, "params": llama_params(), "weights": "random (seed 0)"}}
    rows: dict[str, dict[str, Any]] = {}
    paths: dict[str, tuple[str, Path]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "BF16.gguf"
        write_gguf(base, seed)
        for qtype in TYPES:
            path = Path(tmp) / f"{qtype}.gguf"
            why = None if qtype == "BF16" else quantize(base, path, qtype)
            name = f"llama.cpp {qtype}"
            if why is not None:
                rows[name] = {"engine": "llama.cpp", "type": qtype, "available": False, "reason": why}
                continue
            path = base if qtype == "BF16" else path
            rows[name] = {"engine": "llama.cpp", "type": qtype, "available": True, "file_bytes": path.stat().st_size,
                          "tensor_types": tensor_types(path)}
            paths[name] = ("llama.cpp", path)
        for m in MODELS:
            rows[m] = {"engine": "tilelli", "type": m, "available": True}
            paths[m] = ("tilelli", SHIPPED_DIR / m)
        rows[TERNARY_INT8] = {"engine": "tilelli", "type": TERNARY_INT8, "available": True}
        paths[TERNARY_INT8] = ("tilelli-int8", SHIPPED_DIR / TERNARY)
        decoders = {name: open_decoder(kind, path, THREADS[0]) for name, (kind, path) in paths.items()}
        rates, loads = measure(decoders, prompt, tokens, repeats, seed)
        for name in decoders:
            rows[name].update({col: statistics.median(r) for col, r in rates[name].items()})
            rows[name]["samples"] = rates[name]
            rows[name]["peak_rss_mb"] = peak_rss_mb(*paths[name])
        for d in decoders.values():
            if isinstance(d, LlamaDecoder):
                d.close()
    result.update(loads_1min=loads, rows=rows, ratios=ratios(rows))
    return result


def markdown(result: dict[str, Any]) -> str:
    """The page: bytes/s per column for every model, then the ratios against the targets."""
    m, lm, loads = result["machine"], result["llama_model"], [x for x in result["loads_1min"] if x is not None]
    build = result["llama_cpp"]
    head = "| model | " + " | ".join(f"{HEADINGS[kind]}, {t}t" for _, kind, t in COLUMNS) + " | peak RSS |"
    ggml = " ".join(build[k] for k in ("ggml_version", "ggml_commit") if k in build) or "version not exposed"
    lines = [f"Tilelli's engine vs llama.cpp (llama-cpp-python {build['llama_cpp_python']}, ggml {ggml}) "
             f"on {cpu_line(m)}; bytes (= tokens)/s, "
             f"median of {result['repeats']} shuffled rounds; 1-min load at round starts "
             f"{min(loads, default=0):.2f}-{max(loads, default=0):.2f}"
             f"{' (a loaded machine: a provisional record)' if max(loads, default=0) > 1.0 else ''}. "
             f"llama.cpp model: random weights, Llama d={lm['d_model']} x {lm['n_layers']} layers, "
             f"head_dim {lm['head_dim']}, FFN {lm['ffn']}, vocab {lm['vocab']}, {lm['params'] / 1e6:.2f} M parameters. "
             f"Decode: {result['decode_bytes']} bytes after a 16-byte prompt; prefill: {result['prefill_bytes']} "
             f"bytes; {result['batch']} sequences decoding together (total). `{TERNARY_INT8}`: the "
             "integer path, what `tilelli generate` runs for a ternary model (its default since session 13); "
             f"`{TERNARY}`: the exact float path (`--no-int8`).", "",
             head, "|---" + "|---:" * (len(COLUMNS) + 1) + "|"]
    for name, r in result["rows"].items():
        label = f"`{name}`" if r["engine"] == "tilelli" else name
        if not r["available"]:
            lines.append(f"| {label} | not available: {r['reason']} |" + " |" * len(COLUMNS))
            continue
        cells = " | ".join(f"{r[col]:,.0f}" for col, _, _ in COLUMNS)
        lines.append(f"| {label} | {cells} | {r['peak_rss_mb']:.0f} MB |")
    lines += ["", "| ratio (target) | " + " | ".join(f"{HEADINGS[kind]}, {t}t" for _, kind, t in COLUMNS) + " |",
              "|---" + "|---:" * len(COLUMNS) + "|"]
    for what, cols in result["ratios"].items():
        target = 1.5 if what.startswith(TERNARY) else 1.0
        cells = " | ".join(f"{c['ratio']:.2f}x" + (f" ({c['best']})" if "best" in c else "") for c in cols.values())
        lines.append(f"| {what} (>= {target:g}x) | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="shuffled rounds; the median is reported (default 5)")
    ap.add_argument("--tokens", type=int, default=200, help="bytes decoded per sequence (default 200)")
    ap.add_argument("--rss-child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    add_output_args(ap, RESULTS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], Path(args.rss_child[1]))
        return
    text = VALID.read_bytes() if VALID.is_file() else b"Once upon a time, there was a dog. " * 20
    result = run(args.repeats, args.tokens, text[:PREFILL])
    result.update(version=__version__, when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  command=" ".join(sys.argv))
    publish(args, "peers", result, markdown(result))
    print(markdown(result))
    print(json.dumps(result["ratios"], indent=1))


if __name__ == "__main__":
    main()
