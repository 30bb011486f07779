"""docs/results/base.md and base.json are what the committed run records give, the re-check
fails when one published number is edited (studies/base_models/check.py's gate), and the README's
headline table is what the studies' records give (python -m studies.headline --check)."""

from __future__ import annotations

import copy
import json

from studies import headline
from studies.base_models import analyse as base_models
from studies.checker import Checker
from studies.common import DOCS, README


def test_base_models_page_is_what_the_run_records_give():
    recomputed = base_models.analyse(base_models.BASE_COPIES)
    checker = Checker()
    checker.check_json(json.loads((base_models.RESULTS / "base.json").read_text()), recomputed, 1e-9)
    assert checker.failures == []
    assert (DOCS / "base.md").read_text() == base_models.markdown(recomputed)


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


def test_readme_headline_is_what_the_records_give():
    readme = README.read_text()
    assert readme == headline.with_records(readme)
