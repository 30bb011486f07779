"""Re-check benchmarks/results/chat.json (the README's chat tables and samples) from the shipped
chat checkpoints: rebuild the held-out sets from ../shared/data, re-run every measurement, compare.

Tolerances: refusal and false-refusal rates within 2 percentage points, the per-kind refusal
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

from tilelli.chat.dataset import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATE, OTHER_RATE, BPB, AUROC = 0.02, 0.04, 0.005, 0.01


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
            for group, subsets in (("facts_refused", ("all", "seen_form", "unseen_form")),
                                   ("requests_refused", ("all", "seen_template", "unseen_template"))):
                for sub in subsets:
                    checker.check(f"{name} {group} {sub}", pub[group][sub]["rate"], now[group][sub]["rate"], RATE,
                                  absolute=True)
            for kind, r in pub["other_refused"].items():
                checker.check(f"{name} refuses {kind}", r["rate"], now["other_refused"][kind]["rate"], OTHER_RATE,
                              absolute=True)
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
