"""The README's base-model block and base.json are what the committed run records give, and the
re-check fails when one published number is edited (reproduce/base_models.py's gate)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "reproduce"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # first: benchmarks/ab.py, not reproduce/ab.py

import base_models  # noqa: E402
from checker import Checker  # noqa: E402
from samples import readme_with  # noqa: E402


def test_base_models_block_is_what_the_run_records_give():
    recomputed = base_models.analyse(base_models.BASE_COPIES)
    checker = Checker()
    checker.check_json(json.loads((base_models.RESULTS / "base.json").read_text()), recomputed, 1e-9)
    assert checker.failures == []
    readme = base_models.README.read_text()
    assert readme == readme_with(base_models.markdown(recomputed), readme, base_models.MARKERS)


def test_an_edited_number_or_a_missing_key_fails_the_recheck():
    recomputed = base_models.analyse(base_models.BASE_COPIES)
    edited = copy.deepcopy(recomputed)
    edited["seeds"][base_models.LITE][0]["final_valid_bpb"] += 1e-4
    checker = Checker()
    checker.check_json(edited, recomputed, 1e-9)
    assert f"seeds.{base_models.LITE}.0.final_valid_bpb" in checker.failures
    assert not any(f.startswith("qat.") for f in checker.failures)
    del edited["qat"][base_models.SHIPPED_TWIN]
    checker.check_json(edited, recomputed, 1e-9)
    assert any(f.startswith(f"qat.{base_models.SHIPPED_TWIN}.") for f in checker.failures)
