"""Session 12: third-turn detector rows (train phrasings, fresh), measured for the variants."""
import json, random, sys, pickle
from pathlib import Path
import torch
torch.set_num_threads(1)
from tilelli.chat import dataset as D, phrasing, sources
from tilelli.commands.calibrate import row_signals
from tilelli.infer import load_decoder

ck, out = Path(sys.argv[1]), Path(sys.argv[2])
shared = Path('/work/shared/data'); ts = shared / "tinystories"
rng = random.Random(1212)
train_files = [ts / "TinyStories-train.head2MiB.txt", ts / "TinyStoriesV2-GPT4-train.head10k-lines.txt"]
train_stories = [s for p in train_files for s in sources.tinystories(p)]
det = [json.loads(l) for l in open(Path(sys.argv[3]) / 'detector.jsonl')]
facts_q = [r['prompt'] for r in det if r['refuse']]
maker = D.HistoryMaker("train", train_stories, facts_q, rng)  # histories: training stories, fresh facts
stories = rng.sample(train_stories, 1600)
requests, _ = D._request_rows(stories, 600, "train", rng)
small = D._small_talk_rows(400, "train", rng)
fact_rows = [D._row("fact", q, [], "single") for q in rng.sample(facts_q, 600)]
base = [{k: v for k, v in r.items() if k not in ("reference", "template")} for r in requests + small + fact_rows]
third = D._third_turns(base, maker, rng)
for r in third:
    r["refuse"] = r["kind"] == "fact"
dec = load_decoder(ck, "torch", 1)
sig = row_signals(dec, third, alone=False)
pickle.dump({"sig": sig, "rows": third}, open(out, 'wb'))
print(len(third), sum(r['refuse'] for r in third))
