import sys, pickle, io, contextlib
sys.argv = ['x', '/root/tl/s12/sig-tern.pkl']
exec(open('/root/tl/s12/det_sim.py').read().replace('if __name__ == "__main__":', 'if False:'))
from tilelli.chat import phrasing
norm = lambda t: ''.join(ch for ch in t.lower() if ch.isalnum() or ch == ' ').strip()
held = {norm(p) for s in ("calibration", "eval") for c, p in phrasing.small_talk_prompts(s)}
english_identity(held)
d2 = pickle.load(open('/root/tl/s12/sig2-tern.pkl', 'rb'))
sig['third'], rows['third'] = d2['sig'], d2['rows']
ans = [i for i, r in enumerate(rows['third']) if not r['refuse']]
sig['third_ans'], rows['third_ans'] = [sig['third'][i] for i in ans], [rows['third'][i] for i in ans]
base = ["train", "detector"]
run("+third turns", base + ["third"])
run("+third turns +identity_en", base + ["third", "st_ident_en"])
run("+third answerable only +identity_en", base + ["third_ans", "st_ident_en"])
with contextlib.redirect_stdout(io.StringIO()):
    det, rule = run("x", base + ["third_ans", "st_ident_en"])
for s, r in zip(sig['conv'] + sig['other'], rows['conv'] + rows['other']):
    if r['kind'] in ('language', 'gibberish') and not rule.decide(s).abstain:
        sc = [det.score(x.features) for x in s.readings]
        print(r['kind'], r.get('context', 'single'), f"scores {[round(v, 2) for v in sc]} surprise {s.text_surprise:.2f}", repr(r['prompt'][:60]))
import numpy as np
for kind in ('request', 'small_talk'):
    su = sorted((s.text_surprise, r['prompt']) for s, r in zip(sig['cal'], rows['cal']) if r['kind'] == kind)
    print(kind, [(round(a, 2), b[:25]) for a, b in su[-5:]])
