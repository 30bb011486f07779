"""The speed gates name their CPU: targets (ratios within one run) are reported on any CPU and
fail only where the README claims them; exact published figures are compared only on the
record's own CPU. The published decode and peer pages render their records. No benchmark runs
here, and llama.cpp is never imported (the `peers` extra is not a test dependency)."""

from __future__ import annotations

import copy
import json

from studies.checker import Checker
from studies.common import DOCS
from studies.speed import check_decode, check_peers, decode_speed, peers
from tilelli.infer.bench import machine, same_cpu
from tilelli.infer.bench import markdown as decode_markdown

DECODE = json.loads((decode_speed.RESULTS / "decode_speed.json").read_text())


def peer_record() -> dict:
    """A peers.json as peers.run writes it, with made-up rates (llama.cpp's TQ1_0 missing), so
    that the gate's logic is tested without llama.cpp."""
    rows = {f"llama.cpp {q}": {"engine": "llama.cpp", "type": q, "available": True, "peak_rss_mb": 60.0,
                               **{col: 1000.0 + 100 * i for col, _, _ in peers.COLUMNS}}
            for i, q in enumerate(peers.TYPES)}
    rows["llama.cpp TQ1_0"] = {"engine": "llama.cpp", "type": "TQ1_0", "available": False, "reason": "why not"}
    for m in (*peers.MODELS, peers.TERNARY_INT8):
        rows[m] = {"engine": "tilelli", "type": m, "available": True, "peak_rss_mb": 40.0,
                   **{col: 1500.0 if m == peers.TERNARY_INT8 else 1200.0 for col, _, _ in peers.COLUMNS}}
    return {"machine": DECODE["machine"], "repeats": 3, "decode_bytes": 200, "prefill_bytes": 512, "batch": 8,
            "threads": [1, 2], "loads_1min": [0.5, 0.7], "llama_cpp": {"llama_cpp_python": "0.3.36"},
            "llama_model": {**peers.SHAPE, "params": peers.llama_params()}, "rows": rows, "ratios": peers.ratios(rows)}


def test_published_pages_render_their_records():
    assert (DOCS / "decode_speed.md").read_text() == decode_markdown(DECODE)
    for sub in ("", "avx2"):  # written where llama-cpp-python is installed; avx2: the AVX2-only builds
        if (peers.RESULTS / sub / "peers.json").is_file():
            record = json.loads((peers.RESULTS / sub / "peers.json").read_text())
            assert (DOCS / sub / "peers.md").read_text() == peers.markdown(record)


def test_records_name_their_cpu():
    m = machine()  # what decode_speed.py and peers.py write into their records
    assert m["cpu"] and m["cpu_family_model"] and set(m["isa"]) == {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
    assert same_cpu(m, machine()) and not same_cpu(m, {**m, "isa": {**m["isa"], "avx2": not m["isa"]["avx2"]}})
    assert not same_cpu(m, DECODE["machine"] | {"cpu": "another"})
    assert not same_cpu(m, {**m, "native_flags": "-mno-avx512f"})  # an AVX2-only build's figures are another's


def test_a_target_fails_only_where_the_readme_claims_it():
    checker = Checker()
    assert not checker.target("unclaimed", 1.0, 4.0, claimed=False)
    assert checker.failures == []
    checker.target("claimed", 0.5, 1.0, claimed=True)
    assert checker.failures == ["claimed"]


def test_exact_figures_only_on_the_records_cpu(capsys):
    now = copy.deepcopy(DECODE)
    for r in now["models"].values():
        r["fast_b8_vs_b1"] *= 2  # far off the published figure, still short of its unclaimed target
    now["machine"]["cpu_family_model"] = "0/0"
    checker = Checker()
    check_decode.check(DECODE, now, checker)
    assert checker.failures == [] and "other CPU: exact figures not compared" in capsys.readouterr().out
    now["machine"] = DECODE["machine"]
    check_decode.check(DECODE, now, checker)
    assert sorted(checker.failures) == sorted(f"{m} fast_b8_vs_b1" for m in DECODE["models"])


def test_the_engine_slower_than_the_reference_fails():
    now = copy.deepcopy(DECODE)
    now["models"][peers.TERNARY]["fast_b1_vs_reference"] = 0.9
    now["machine"]["cpu"] = "another"
    checker = Checker()
    check_decode.check(DECODE, now, checker)
    assert checker.failures == [f"{peers.TERNARY} engine vs PyTorch GPT, batch 1"]


def test_peer_ratios_pick_the_fastest_available_quant():
    record = peer_record()
    ternary = record["ratios"][f"{peers.TERNARY} / best llama.cpp quant"]["decode_b1_1t"]
    assert ternary == {"ratio": 1200.0 / 1400.0, "best": "TQ2_0"}  # TQ1_0 is not available
    int8 = record["ratios"][f"{peers.TERNARY_INT8} / best llama.cpp quant"]["decode_b1_1t"]
    assert int8 == {"ratio": 1500.0 / 1400.0, "best": "TQ2_0"}  # the integer path, against the same peer
    assert record["ratios"]["vanilla-fp32 / llama.cpp BF16"]["prefill_1t"] == {"ratio": 1.2}
    assert "| llama.cpp TQ1_0 | not available: why not |" in peers.markdown(record)


def test_peer_targets_missed_do_not_fail_the_gate_and_other_cpus_skip_exact_figures(capsys):
    published = peer_record()
    now = copy.deepcopy(published)
    now["machine"] = {**now["machine"], "cpu": "another"}
    checker = Checker()
    check_peers.check(published, now, checker)
    out = capsys.readouterr().out
    assert checker.failures == [] and "not reached" in out and "other CPU: exact figures not compared" in out
