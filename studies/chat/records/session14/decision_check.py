"""Session 14's check of the abstain decision on signals measured once: could the shipped ternary
chat model meet "facts refused >= 97 %" by its decision alone?

Steps (the ternary chat model shipped before this session, torch path, one thread):

    cd studies/chat/records/session14    # the repository root on PYTHONPATH
    python ../session12/detector_design_check.py measure ~/tl/s14/ternary --data ~/tl/data/chat7
    python decision_check.py hidden ~/tl/s14/ternary    # the final hidden states of every row
    python decision_check.py broad ~/tl/s14/ternary     # a broader calibration set, measured
    python decision_check.py simulate ~/tl/s14/ternary > decision_check.txt

`hidden`: the final LayerNorm's output (what the head reads) at the ASSISTANT byte and its mean
over the user text, for both readings of every row (the probe's hidden block). `broad`: the
calibration set `tilelli prepare-chat` writes with 52 small-talk phrasings in the calibration
split instead of 16 (BROAD below: every category gets 4-7, where yes/no had only "Alright") and
300 small-talk prompts instead of 150; every other file of the set is byte-identical. `simulate`:
the rule fitted and calibrated as `tilelli calibrate` does (per kind, alpha 0.03, half per
threshold) for each variant, and its refusal rates on the held-out sets by kind and context.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from studies.chat.evaluate import CONTEXTS, KINDS
from studies.common import SHARED
from tilelli.chat import dataset, phrasing
from tilelli.chat.abstain import conformal_threshold, highest
from tilelli.chat.detector import Detector

MODEL = "tilelli-chat-lite-ternary"  # (session 10's weights when this ran: git show b730aec:checkpoints/...)
HELD = ("facts", "requests", "small_talk", "other", "conversation")
BROAD = {"greeting": ("Hi friend", "Good day", "Hey hey", "Hello again"),
         "how_are_you": ("How's your day?", "Are you doing okay?", "How are things with you?", "All good with you?"),
         "thanks": ("Thank you, friend", "Thanks heaps", "Big thanks", "Thanks again"),
         "bye": ("Bye for now", "Goodbye, friend", "See you next time", "Gotta go"),
         "who": ("What kind of thing are you?", "Are you a computer?", "Who is this?", "What's your name, friend?"),
         "can_do": ("What is your job?", "What do you like to do?", "What are you able to do?", "How do you work?"),
         "praise": ("Great job", "I loved that", "Very nice", "That made me smile"),
         "feelings": ("I feel happy", "I am a bit sad today", "I'm lonely", "I'm hungry"),
         "yes_no": ("Okay then", "Yes, please do", "No, thank you", "Sure thing")}


def hidden(out: Path) -> None:
    """(at the ASSISTANT byte, mean over the user text) of the final hidden state, per reading."""
    import torch

    from tilelli.chat.session import conversation_prompt
    from tilelli.chat.template import USER
    from tilelli.model.checkpoint import load
    from tilelli.model.checkpoint_files import SHIPPED_DIR

    torch.set_num_threads(1)
    d = pickle.loads((out / "signals.pkl").read_bytes())
    model, box = load(SHIPPED_DIR / MODEL).eval(), {}
    model.norm_f.register_forward_hook(lambda _m, _i, h: box.__setitem__("h", h))

    def state(prompt: bytes) -> np.ndarray:
        start = prompt.rfind(bytes([USER])) + 1
        with torch.inference_mode():
            model(torch.tensor([list(prompt)]))
        h = box["h"][0].double().numpy()  # (T, C)
        return np.r_[h[-1], h[start - 1:start - 1 + max(len(prompt) - start - 1, 1)].mean(0)]

    states = {}
    for name, rows in d["rows"].items():
        states[name] = []
        for r in rows:
            p = conversation_prompt([tuple(t) for t in r.get("history", [])], r["prompt"], model.config.max_seq_len)[0]
            last = p.rfind(bytes([USER]))
            states[name].append((state(p), state(p[last:]) if last > 0 else None))
    (out / "hidden.pkl").write_bytes(pickle.dumps(states))


def broad(out: Path) -> None:
    """The calibration set with BROAD's phrasings added to the calibration split, measured."""
    from tilelli.commands.calibrate import row_signals
    from tilelli.infer import load_decoder
    from tilelli.model.checkpoint_files import SHIPPED_DIR

    for category, extra in BROAD.items():
        prompts, replies = phrasing.SMALL_TALK[category]
        phrasing.SMALL_TALK[category] = ({**prompts, "calibration": prompts["calibration"] + extra}, replies)
    assert phrasing.families_disjoint()
    with tempfile.TemporaryDirectory() as tmp:
        dataset.build(SHARED, Path(tmp), sizes=dataset.Sizes(calibration_small_talk=300))
        rows = [json.loads(line) for line in (Path(tmp) / "eval" / "calibration.jsonl").open()]
    sig = row_signals(load_decoder(SHIPPED_DIR / MODEL, "torch", 1), rows)
    (out / "broad.pkl").write_bytes(pickle.dumps({"sig": sig, "rows": rows}))


def simulate(out: Path) -> None:
    d = pickle.loads((out / "signals.pkl").read_bytes())
    sig, rows, states = d["sig"], d["rows"], pickle.loads((out / "hidden.pkl").read_bytes())
    b = pickle.loads((out / "broad.pkl").read_bytes())
    narrow = (sig["calibration"], rows["calibration"], states["calibration"])
    wide = (b["sig"], b["rows"], [(None, None)] * len(b["sig"]))  # (no hidden states: the logits detector only)

    def run(name: str, block: str, calibration: tuple, by_context: bool = False) -> None:
        def inputs(s, h):  # noqa: ANN001, ANN202 (one reading's detector inputs)
            f = np.asarray(s.features)
            return {"logits": f, "hidden": np.r_[h, f[-2:]], "both": np.r_[f[:-2], h, f[-2:]]}[block]

        def score(s, h):  # noqa: ANN001, ANN202 (the strongest reading's log-odds)
            pairs = zip(s.readings, h, strict=False)  # h: (in conversation, alone or None)
            return highest(det.score(inputs(r, hh)) if r.features else math.nan for r, hh in pairs)

        def group(s):  # noqa: ANN001, ANN202
            return ("conversation" if s.alone is not None else "single") if by_context else "all"

        fit = [(inputs(s, h[0]), r["refuse"]) for k in ("train", "detector")
               for s, h, r in zip(sig[k], states[k], rows[k], strict=True) if s.features]
        det = Detector.fit(np.array([f for f, _ in fit]), np.array([bool(y) for _, y in fit]), {})
        t_r, t_s = {}, {}
        for s, r, h in zip(*calibration, strict=True):
            t_r.setdefault(group(s), {}).setdefault(r["kind"], []).append(score(s, h))
            t_s.setdefault(group(s), {}).setdefault(r["kind"], []).append(s.text_surprise)
        t_r = {g: max(conformal_threshold(v, 0.015) for v in by.values()) for g, by in t_r.items()}
        t_s = {g: max(conformal_threshold(v, 0.015) for v in by.values()) for g, by in t_s.items()}
        rates = defaultdict(list)
        for k in HELD:
            for s, h, r in zip(sig[k], states[k], rows[k], strict=True):
                g = group(s)
                rates[(r["kind"], r.get("context", "single"))].append(score(s, h) > t_r[g] or s.text_surprise > t_s[g])
        print(f"## {name}: log-odds > {json.dumps({g: round(v, 3) for g, v in t_r.items()})}, surprise > "
              f"{json.dumps({g: round(v, 3) for g, v in t_s.items()})}   % refused: " + ", ".join(CONTEXTS))
        for kind in KINDS:
            print(f"   {kind:12s}" + "".join(f"{100 * np.mean(rates[(kind, c)]):7.1f}" if rates[(kind, c)]
                                             else "      -" for c in CONTEXTS))

    run("the shipped rule (detector on the logits; reproduces the shipped rates)", "logits", narrow)
    run("the shipped rule, calibrated on the broad set", "logits", wide)
    run("detector on the final hidden state + signals", "hidden", narrow)
    run("detector on the logits + the final hidden state + signals", "both", narrow)
    run("the shipped rule, thresholds single-turn / in conversation apart", "logits", narrow, True)
    run("detector on the hidden state, thresholds single-turn / in conversation apart", "hidden", narrow, True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("hidden", "broad", "simulate"))
    ap.add_argument("signals", type=Path, help="the folder of signals.pkl (session 12's measure step writes it)")
    args = ap.parse_args()
    {"hidden": hidden, "broad": broad, "simulate": simulate}[args.step](args.signals.expanduser())


if __name__ == "__main__":
    sys.exit(main())
