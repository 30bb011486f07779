"""Session 12: detector variants on signals measured once (det_measure.py): fit, calibrate per kind, held-out rates."""
import pickle, sys, numpy as np
from collections import defaultdict
from tilelli.chat.detector import Detector
from tilelli.chat.abstain import AbstainRule

d = pickle.load(open(sys.argv[1], 'rb')); sig, rows = d['sig'], d['rows']
KINDS = ["fact", "request", "small_talk", "follow_up", "gibberish", "language", "code", "arithmetic"]
CTX = ["single", "after_story", "after_refusal", "after_small_talk"]
def xy(parts, weight=None):
    xs, ys = [], []
    for k in parts:
        for s, r in zip(sig[k], rows[k]):
            if s.features:
                xs.append(s.features); ys.append(bool(r['refuse']))
    return np.array(xs), np.array(ys)
def run(name, parts, alpha=0.03):
    x, y = xy(parts)
    det = Detector.fit(x, y, {})
    cal = rows['cal']
    rule = AbstainRule.calibrate(sig['cal'], alpha, {}, det, [r.get('kind', 'request') for r in cal])
    rates = defaultdict(list)
    for k in ('facts', 'requests', 'small_talk', 'other', 'conv'):
        for s, r in zip(sig[k], rows[k]):
            rates[(r['kind'], r.get('context', 'single'))].append(rule.decide(s).abstain)
    bk = rule.record['by_kind']
    print(f"## {name}: cv {det.record['cv_auroc']:.4f} t_r {rule.refusal_threshold:.3f} t_s {rule.surprise_threshold:.3f} "
          f"(req {bk['request']['refusal']:.2f}/{bk['request']['surprise']:.2f} st {bk['small_talk']['refusal']:.2f}/{bk['small_talk']['surprise']:.2f})")
    for kind in KINDS:
        print(f"   {kind:12s}" + "".join(f"{100*np.mean(rates[(kind,c)]):7.1f}" if rates[(kind,c)] else "      -" for c in CTX))
    return det, rule
if __name__ == "__main__":
    base = ["train", "detector"]
    variants = {"shipped recipe": base, "+typo small talk": base + ["st_typo"], "+identity": base + ["st_ident"],
                "+chatterbot": base + ["st_chat"], "+all three": base + ["st_typo", "st_ident", "st_chat"]}
    for name in (sys.argv[2].split(",") if len(sys.argv) > 2 else variants):
        run(name, variants[name])

def english_identity(held_out_phrasings):
    norm = lambda t: ''.join(ch for ch in t.lower() if ch.isalnum() or ch == ' ').strip()
    keep = [i for i, r in enumerate(rows['st_ident']) if r['prompt'].isascii()
            and norm(r['prompt']) not in held_out_phrasings]
    sig['st_ident_en'] = [sig['st_ident'][i] for i in keep]; rows['st_ident_en'] = [rows['st_ident'][i] for i in keep]
    return len(keep)
