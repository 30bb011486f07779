"""Join session 12's three per-model chat evaluations (same weights, rules recalibrated with the
new detector rows) into the study's record, as session 11's were joined.

    PYTHONPATH=. python studies/chat/records/session12/combine.py ~/tl/cand12
"""
import json
import sys
from argparse import Namespace
from pathlib import Path

from studies.chat.evaluate import RESULTS, page_of
from studies.common import DOCS, publish

NAMES = ("tilelli-chat-lite-ternary", "tilelli-chat-lite-fp32", "tilelli-chat-vanilla-fp32")
runs = Path(sys.argv[1]).expanduser()
parts = [json.loads((runs / f"ev-{m}" / "chat.json").read_text()) for m in NAMES]
old = json.loads((RESULTS / "chat.json").read_text())
assert len({json.dumps(p["data"], sort_keys=True) for p in parts}) == 1 and {p["limit"] for p in parts} == {0}
for p in parts:
    for m in p["models"]:  # evaluated where they were calibrated; shipped as checkpoints/NAME
        m["checkpoint"] = f"checkpoints/{m['name']}"
result = {**parts[0], "models": [p["models"][0] for p in parts], "previous": old["previous"]}
publish(Namespace(out=RESULTS, docs=DOCS), "chat", result, page_of(result))
print(page_of(result)[:300])
