"""Re-check benchmarks/results/chat.json (the README's chat tables and samples) from the shipped
chat checkpoints: rebuild the held-out sets from ../shared/data, re-run every measurement, compare.

Tolerances: each model's abstain threshold, re-calibrated, within 0.01; refusal and
false-refusal rates (under the calibrated rule and under the greedy decision) within 2 points, the per-kind refusal
rates of other prompts within 4 points (50 prompts each: 2 prompts), reply bpb within 0.5 %,
the abstain-probability AUROC within 0.01 (greedy decisions and float sums may differ slightly
between CPUs and instruction sets); the data hashes, held-out sizes and sample replies exactly,
and the README's chat block must equal chat.md. Exits 1 and names every number that does not
reproduce. About 15 minutes on 2 CPU cores.

    python reproduce/chat.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from chat_eval import MARKERS, README, RESULTS, SHARED, markdown, measure, samples_markdown  # noqa: E402
from checker import Checker  # noqa: E402
from samples import readme_with  # noqa: E402

from tilelli.chat.abstain import conformal_threshold, refusal_scores  # noqa: E402
from tilelli.chat.dataset import build  # noqa: E402
from tilelli.chat.template import turn  # noqa: E402
from tilelli.infer import load_decoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATE, OTHER_RATE, BPB, AUROC, THRESHOLD = 0.02, 0.04, 0.005, 0.01, 0.01


def calibrated(checkpoint: Path, data: Path, alpha: float) -> float:
    """The abstain threshold `tilelli calibrate` computes for `checkpoint` now."""
    rows = [json.loads(line) for line in (data / "eval" / "calibration.jsonl").read_text().splitlines()]
    scores = refusal_scores(load_decoder(checkpoint), [turn(r["prompt"]) for r in rows])
    return conformal_threshold([s.probability for s in scores], alpha)


def main() -> int:
    checker = Checker()
    published = json.loads((RESULTS / "chat.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        meta = build(SHARED, Path(tmp) / "chat")
        checker.check("chat set train sha256", published["data"]["train_sha256"], meta["train"]["sha256"])
        checker.check("held-out sizes", published["data"]["held_out"], meta["held_out"])
        for pub in published["models"]:
            now = measure(pub["name"], ROOT / pub["checkpoint"], ROOT / pub["base"], Path(tmp) / "chat", 0)
            name = pub["name"]
            checker.check(f"{name} has an abstain rule", pub["rule"] is not None, now["rule"] is not None)
            if pub["rule"] is not None and now["rule"] is not None:
                checker.check(f"{name} abstain threshold", pub["rule"]["threshold"],
                              calibrated(ROOT / pub["checkpoint"], Path(tmp) / "chat", pub["rule"]["alpha"]),
                              THRESHOLD, absolute=True)
            greedy = (" (greedy)", pub["greedy_decision"], now["greedy_decision"])
            for decision, p, n in ((" (rule)", pub, now), greedy):
                for group, subsets in (("facts_refused", ("all", "seen_form", "unseen_form")),
                                       ("requests_refused", ("all", "seen_template", "unseen_template"))):
                    for sub in subsets:
                        checker.check(f"{name} {group} {sub}{decision}", p[group][sub]["rate"], n[group][sub]["rate"],
                                      RATE, absolute=True)
                for kind, r in p["other_refused"].items():
                    checker.check(f"{name} refuses {kind}{decision}", r["rate"], n["other_refused"][kind]["rate"],
                                  OTHER_RATE, absolute=True)
            for side in ("chat", "base"):
                checker.check(f"{name} reply bpb ({side})", pub["reply_bpb"][side]["bpb"],
                              now["reply_bpb"][side]["bpb"], BPB)
            checker.check(f"{name} abstain AUROC", pub["abstain_probability"]["auroc_facts_vs_requests"],
                          now["abstain_probability"]["auroc_facts_vs_requests"], AUROC, absolute=True)
            for s_pub, s_now in zip(pub["samples"], now["samples"], strict=True):
                same = s_pub["reply"] == s_now["reply"]
                checker.check(f"{name} sample '{s_pub['prompt'][:24]}' identical", True, same)
    block = markdown(published) + "\n" + samples_markdown(published)
    checker.check("chat.md = chat.json", True, (RESULTS / "chat.md").read_text() == block)
    checker.check("README chat block = chat.md", True, README.read_text() == readme_with(block, README.read_text(),
                                                                                          MARKERS))
    return checker.finish("chat")


if __name__ == "__main__":
    sys.exit(main())
