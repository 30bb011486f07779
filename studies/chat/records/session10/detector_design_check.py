"""Design check (session 10): does fitting the refusal detector also on facts the model never
trained on help? Replays `tilelli.chat.dataset.build` (seed 0) up to the split of the fact
questions, takes training-split questions past the 3,500 trained on, fresh requests and small
talk, measures every set with a chat checkpoint (the stage-2 ternary one), and pickles the
signals for `detector_design_check_fit.py`. Not a study: it ran once, before `detector.jsonl`
existed (the chat set now carries such turns, from its own random stream).

    python studies/chat/records/session10/detector_design_check.py CHECKPOINT CHAT_DATA OUT.pkl
    python studies/chat/records/session10/detector_design_check_fit.py OUT.pkl
"""

import json
import pickle
import random
import sys
from pathlib import Path

import torch

from tilelli.chat import dataset as D
from tilelli.chat import phrasing, sources
from tilelli.chat.detector import training_turns
from tilelli.commands.calibrate import row_signals
from tilelli.infer import load_decoder

torch.set_num_threads(1)
shared, data = Path(__file__).resolve().parents[5] / "shared" / "data", Path(sys.argv[2])
rng, sizes = random.Random(0), D.Sizes()
chat, qa, ts = shared / "chat", shared / "qa", shared / "tinystories"
train_files = [ts / "TinyStories-train.head2MiB.txt", ts / "TinyStoriesV2-GPT4-train.head10k-lines.txt"]
stories = []  # the same draws as build(), in the same order, so the split below is build()'s
for path in train_files:
    for story in sources.tinystories(path):
        whole = len(story.encode()) <= D.MAX_REPLY_BYTES
        for kinds in [("topic", "words")] * 3 if whole else [("next",)]:
            made = D.story_turn(story, "train", rng, kinds)
            if made:
                stories.append(made)
for _ in range(len(stories) // 3):
    phrasing.small_talk("train", rng)
n_held = sizes.facts + sizes.conversation_each * 2 + sizes.history_facts
train_q, _, _ = D.split_facts(sources.facts(qa, chat), n_held, rng)
fresh_rng = random.Random(7)
fresh_facts = [{"prompt": phrasing.fact_question(q, "train", fresh_rng)[0], "history": []}
               for q, _ in train_q[sizes.train_facts:][:600]]
train_stories = [s for p in train_files for s in sources.tinystories(p)]
fresh_rng.shuffle(train_stories)
fresh_requests, _ = D._request_rows(train_stories[:700], 400, "train", fresh_rng)
fresh_small = D._small_talk_rows(200, "train", fresh_rng)
decoder = load_decoder(Path(sys.argv[1]), "torch", 1)
turns = training_turns((data / "train.bin").read_bytes(), 1500)


def held_out(name: str) -> list[dict]:
    return [json.loads(line) for line in (data / "eval" / name).open()]


sets = {"train": [{"history": h, "prompt": t} for h, t, _ in turns], "fresh_facts": fresh_facts,
        "fresh_ans": fresh_requests + fresh_small, "facts": held_out("facts.jsonl"),
        "requests": held_out("requests.jsonl"), "small_talk": held_out("small_talk.jsonl"),
        "cal": held_out("calibration.jsonl"),
        "conv": [r for r in held_out("conversation.jsonl")
                 if r["kind"] in ("fact", "request", "small_talk", "follow_up")]}
signals = {k: row_signals(decoder, rows) for k, rows in sets.items()}
with open(sys.argv[3], "wb") as f:
    pickle.dump({"sig": signals, "train_labels": [t[2] for t in turns], "conv_rows": sets["conv"]}, f)
