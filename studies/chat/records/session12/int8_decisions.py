"""Session 12: the int8 study's chat decisions re-measured under the rule recalibrated with the
new detector rows (same weights, so the bpb rows stand); writes the study's record and page."""
import json
import sys
from argparse import Namespace
from pathlib import Path

from studies.common import DOCS, publish
from studies.quality.int8 import RESULTS, decisions, markdown

record = json.loads((RESULTS / "int8.json").read_text())
record["chat_decisions"] = decisions(Path(sys.argv[1]))
publish(Namespace(out=RESULTS, docs=DOCS), "int8", record, markdown(record["rows"], record["chat_decisions"]))
print(markdown(record["rows"], record["chat_decisions"]))
