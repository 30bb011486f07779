"""Session 12's design check of the refusal detector's fresh rows, on signals measured once.

Step 1 (`measure`): the rule's signals, with detector features, of every row a variant fits on or
is scored on, from the shipped checkpoint (torch path, one thread): 3,000 training turns, the
chat set's `detector.jsonl` (session 10's rows), candidate rows (typo'd small talk, the identity
set's questions, ChatterBot openings; then requests, small talk and facts as third turns), the
calibration prompts and every held-out prompt. Step 2 (`simulate`): each variant's detector
fitted, its rule calibrated per kind at alpha 0.03 as `tilelli calibrate` does, and the held-out
refusal rates by kind and context that follow.

    cd studies/chat/records/session12   # with the repository root on PYTHONPATH
    python detector_design_check.py measure ~/tl/s12 --data ~/tl/data/chat5
    python detector_design_check.py simulate ~/tl/s12 > detector_design_check.txt
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pickle
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from tilelli.chat import dataset, phrasing, sources
from tilelli.chat.abstain import AbstainRule
from tilelli.chat.detector import Detector, training_turns

SHARED = Path(__file__).resolve().parents[5] / "shared" / "data"
KINDS = ["fact", "request", "small_talk", "follow_up", "gibberish", "language", "code", "arithmetic"]
CONTEXTS = ["single", "after_story", "after_refusal", "after_small_talk"]
HELD_OUT = ("calibration", "facts", "requests", "small_talk", "other", "conversation")


def answerable(prompt: str) -> dict:
    return {"prompt": prompt, "history": [], "refuse": False}


def candidate_rows(data: Path) -> dict[str, list[dict]]:
    """Every row set a variant may fit on (seeded: the same rows each run)."""
    chat, ts = SHARED / "chat", SHARED / "tinystories"
    rng = random.Random(12)
    rows = {"train": [{"history": h, "prompt": t, "refuse": r}
                      for h, t, r in training_turns((data / "train.bin").read_bytes(), 3000)],
            "detector": [json.loads(line) for line in (data / dataset.DETECTOR_FILE).open()],
            "st_typo": [answerable(phrasing.small_talk("train", rng, phrasing.Noise(typo=1.0))[1])
                        for _ in range(600)]}
    identity = [q for q, _, src in sources.instructions(chat) if src == "identity"]
    rows["st_ident"] = [answerable(phrasing.Noise(typo=0.5 if copy else 0.0).apply(q, rng))
                        for q in identity for copy in range(4)]
    rows["st_chat"] = [answerable(d[0][0]) for d in sources.chatterbot_dialogues(chat, dataset.SMALL_TALK_CATEGORIES)]
    # third turns: requests, small talk and facts after a story, a refusal or small talk
    rng = random.Random(1212)
    stories = [s for name in ("TinyStories-train.head2MiB.txt", "TinyStoriesV2-GPT4-train.head10k-lines.txt")
               for s in sources.tinystories(ts / name)]
    facts = [r["prompt"] for r in rows["detector"] if r["refuse"]]
    maker = dataset.HistoryMaker("train", stories, facts, rng)
    requests, _ = dataset._request_rows(rng.sample(stories, 1600), 600, "train", rng)
    small = dataset._small_talk_rows(400, "train", rng)
    fact_rows = [dataset._row("fact", q, [], "single") for q in rng.sample(facts, 600)]
    base = [{k: v for k, v in r.items() if k not in ("reference", "template")} for r in requests + small + fact_rows]
    rows["third"] = [{**r, "refuse": r["kind"] == "fact"} for r in dataset._third_turns(base, maker, rng)]
    return rows


def measure(name: str, data: Path, out: Path) -> None:
    import torch

    from tilelli.commands.calibrate import row_signals
    from tilelli.infer import load_decoder
    from tilelli.model.checkpoint_files import SHIPPED_DIR

    torch.set_num_threads(1)
    decoder = load_decoder(SHIPPED_DIR / name, "torch", 1)
    fitted = candidate_rows(data)
    held = {f: [json.loads(line) for line in (data / "eval" / f"{f}.jsonl").open()] for f in HELD_OUT}
    sig = {k: row_signals(decoder, r, alone=False) for k, r in fitted.items()}  # the fit reads conversations
    sig |= {k: row_signals(decoder, r) for k, r in held.items()}  # the rule reads both readings
    out.mkdir(parents=True, exist_ok=True)
    (out / "signals.pkl").write_bytes(pickle.dumps({"sig": sig, "rows": fitted | held}))


def simulate(signals: Path) -> None:
    d = pickle.loads((signals / "signals.pkl").read_bytes())
    sig, rows = d["sig"], d["rows"]

    def subset(name: str, keep: list[int], source: str) -> None:
        sig[name], rows[name] = [sig[source][i] for i in keep], [rows[source][i] for i in keep]

    held_out = {dataset.normalise(p) for split in ("calibration", "eval")
                for _, p in phrasing.small_talk_prompts(split)}
    english = [i for i, r in enumerate(rows["st_ident"])
               if r["prompt"].isascii() and dataset.normalise(r["prompt"]) not in held_out]
    subset("st_ident_en", english, "st_ident")
    subset("third_ans", [i for i, r in enumerate(rows["third"]) if not r["refuse"]], "third")

    def run(name: str, parts: list[str], show: bool = True) -> tuple[Detector, AbstainRule]:
        x = np.array([s.features for k in parts for s in sig[k] if s.features])
        y = np.array([bool(r["refuse"]) for k in parts for s, r in zip(sig[k], rows[k], strict=True) if s.features])
        det = Detector.fit(x, y, {})
        rule = AbstainRule.calibrate(sig["calibration"], 0.03, {}, det,
                                     [r.get("kind", "request") for r in rows["calibration"]])
        rates = defaultdict(list)
        for k in HELD_OUT[1:]:
            for s, r in zip(sig[k], rows[k], strict=True):
                rates[(r["kind"], r.get("context", "single"))].append(rule.decide(s).abstain)
        if show:
            by = rule.record["by_kind"]
            print(f"## {name}: cv AUROC {det.record['cv_auroc']:.4f}, t_r {rule.refusal_threshold:.3f}, "
                  f"t_s {rule.surprise_threshold:.3f} (requests {by['request']['refusal']:.2f}, "
                  f"small talk {by['small_talk']['refusal']:.2f})   % refused: " + ", ".join(CONTEXTS))
            for kind in KINDS:
                print(f"   {kind:12s}" + "".join(f"{100 * np.mean(rates[(kind, c)]):7.1f}" if rates[(kind, c)]
                                                 else "      -" for c in CONTEXTS))
        return det, rule

    base = ["train", "detector"]
    variants = {"session 11's rows (the shipped rule)": base, "+ typo'd small talk": base + ["st_typo"],
                "+ identity questions (all)": base + ["st_ident"], "+ ChatterBot openings": base + ["st_chat"],
                "+ all three": base + ["st_typo", "st_ident", "st_chat"],
                "+ identity questions (English, held-out phrasings left out)": base + ["st_ident_en"],
                "+ identity (English) + typo'd small talk": base + ["st_ident_en", "st_typo"],
                "+ third turns (facts too)": base + ["third"],
                "+ third turns (facts too) + identity (English)": base + ["third", "st_ident_en"],
                "+ answerable third turns + identity (English): chosen": base + ["third_ans", "st_ident_en"]}
    for name, parts in variants.items():
        run(name, parts)
    with contextlib.redirect_stdout(io.StringIO()):
        det, rule = run("", variants["+ answerable third turns + identity (English): chosen"])
    print("## other languages and gibberish the chosen rule answers: detector log-odds per reading, surprise")
    for s, r in zip(sig["conversation"] + sig["other"], rows["conversation"] + rows["other"], strict=True):
        if r["kind"] in ("language", "gibberish") and not rule.decide(s).abstain:
            scores = [round(det.score(x.features), 2) for x in s.readings]
            print(f"   {r['kind']} {r.get('context', 'single')}: {scores} {s.text_surprise:.2f} {r['prompt'][:60]!r}")
    print("## the calibration's most surprising answerable prompts (bits/byte)")
    for kind in ("request", "small_talk"):
        cal = zip(sig["calibration"], rows["calibration"], strict=True)
        top = sorted((s.text_surprise, r["prompt"]) for s, r in cal if r["kind"] == kind)[-5:]
        print(f"   {kind}: " + ", ".join(f"{v:.2f} {p[:25]!r}" for v, p in top))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("measure", "simulate"))
    ap.add_argument("signals", type=Path, help="the folder of signals.pkl (measure writes it, simulate reads it)")
    ap.add_argument("--model", default="tilelli-chat-lite-ternary", help="measure: the shipped chat checkpoint")
    ap.add_argument("--data", type=Path, default=Path("~/tl/data/chat5"), help="measure: session 10's chat set")
    args = ap.parse_args()
    if args.step == "measure":
        measure(args.model, args.data.expanduser(), args.signals.expanduser())
    else:
        simulate(args.signals.expanduser())


if __name__ == "__main__":
    sys.exit(main())
