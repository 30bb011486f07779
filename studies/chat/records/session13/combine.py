"""Join session 13's three per-model chat evaluations of the shipped chat models (session 10's
weights, rules recalibrated on the chat7 set) into the study's record.

    PYTHONPATH=. python studies/chat/records/session13/combine.py ~/tl/cand13
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
assert len({json.dumps(p["data"], sort_keys=True) for p in parts}) == 1 and {p["limit"] for p in parts} == {0}
# the weights are those the record had before: no earlier checkpoint to compare reply bpb with
result = {**parts[0], "models": [p["models"][0] for p in parts], "previous": {}}
publish(Namespace(out=RESULTS, docs=DOCS), "chat", result, page_of(result))
print(page_of(result)[:300])
