"""Join session 14's three per-model chat evaluations (the stage-3 chat models, each with the
reply bpb of the model it replaces on the same references) into the study's record. The
candidates were evaluated from `~/tl/cand14/NAME`; `studies/chat/ship.py` then exported the same
runs into checkpoints/ and the candidates' rules were copied beside them: the record names
checkpoints/NAME once its weights and rule are checked to be the candidate's, byte for byte.

    PYTHONPATH=. python studies/chat/records/session14/combine.py ~/tl/cand14
"""
import hashlib
import json
import sys
from argparse import Namespace
from pathlib import Path

from studies.chat.evaluate import RESULTS, page_of
from studies.common import DOCS, ROOT, publish

NAMES = ("tilelli-chat-lite-ternary", "tilelli-chat-lite-fp32", "tilelli-chat-vanilla-fp32")
runs = Path(sys.argv[1]).expanduser()
parts = [json.loads((runs / f"ev-{m}" / "chat.json").read_text()) for m in NAMES]
assert len({json.dumps(p["data"], sort_keys=True) for p in parts}) == 1 and {p["limit"] for p in parts} == {0}
for name, p in zip(NAMES, parts, strict=True):
    for file in ("model.safetensors", "abstain.json"):
        a, b = (hashlib.sha256((d / name / file).read_bytes()).hexdigest() for d in (runs, ROOT / "checkpoints"))
        assert a == b, f"checkpoints/{name}/{file} is not the evaluated candidate's"
    p["models"][0]["checkpoint"] = f"checkpoints/{name}"
    p["previous"][name]["checkpoint"] = "session 10's weights (checkpoints/ before session 14)"
previous = {name: p["previous"][name] for name, p in zip(NAMES, parts, strict=True)}
result = {**parts[0], "models": [p["models"][0] for p in parts], "previous": previous}
publish(Namespace(out=RESULTS, docs=DOCS), "chat", result, page_of(result))
print(page_of(result)[:300])
