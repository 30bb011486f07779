"""Session 12: signals (with detector features) of every row the detector variants need, measured once."""
import json, random, sys, pickle
from pathlib import Path
import torch
torch.set_num_threads(1)
from tilelli.chat import phrasing, sources
from tilelli.chat.detector import training_turns
from tilelli.commands.calibrate import row_signals
from tilelli.infer import load_decoder

ck, data, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
chat = Path('/work/shared/data/chat')
ev = lambda n: [json.loads(l) for l in open(data / 'eval' / n)]
stream = (data / 'train.bin').read_bytes()
turns = training_turns(stream, 3000)
rng = random.Random(12)
typo_noise = phrasing.Noise(typo=1.0)
st_typo = []
for _ in range(600):
    cat, text, _r = phrasing.small_talk("train", rng, typo_noise)
    st_typo.append({"prompt": text, "history": [], "refuse": False})
ident = [q for q, a, src in sources.instructions(chat) if src == "identity"]
st_ident = []
for q in ident:
    for k in range(4):
        st_ident.append({"prompt": phrasing.Noise(typo=0.5 if k else 0.0).apply(q, rng), "history": [], "refuse": False})
dialogues = sources.chatterbot_dialogues(chat, ("greetings", "conversations", "emotion", "humor"))
st_chat = [{"prompt": d[0][0], "history": [], "refuse": False} for d in dialogues]
sets = {"train": [{"history": h, "prompt": t, "refuse": r} for h, t, r in turns],
        "detector": [json.loads(l) for l in open(data / 'detector.jsonl')],
        "st_typo": st_typo, "st_ident": st_ident, "st_chat": st_chat}
held = {"cal": ev('calibration.jsonl'), "facts": ev('facts.jsonl'), "requests": ev('requests.jsonl'),
        "small_talk": ev('small_talk.jsonl'), "other": ev('other.jsonl'), "conv": ev('conversation.jsonl')}
dec = load_decoder(ck, "torch", 1)
sig = {}
for k, rows in sets.items():
    sig[k] = row_signals(dec, rows, alone=False); print(k, len(rows), flush=True)
for k, rows in held.items():
    sig[k] = row_signals(dec, rows); print(k, len(rows), flush=True)
pickle.dump({"sig": sig, "rows": {**sets, **held}}, open(out, 'wb'))
