"""Does the chat model abstain where it should, and only there? Measured on held-out prompts.

For every chat checkpoint (Lite FP32, its ternary twin, vanilla FP32), on the held-out sets of
`tilelli prepare-chat` (rebuilt here from ../shared/data, and checked to hash to what the
runs trained next to):
- **refusals** on 400 world-fact questions never trained on (split by question, near-duplicates
  removed from training), overall and for phrasings the model saw / never saw;
- **false refusals** on 240 story requests built from the TinyStories *valid* slice;
- **refusals of other prompts** it was not taught about: gibberish, other languages, code,
  arithmetic (50 each);
- **answer quality**: bits per byte of the reference reply given its request, chat model
  (chat template) vs its base model (the request, a newline, then the reply), reply bytes only;
- **abstain probability** (the teacher-forced probability of the whole refusal): its mean on
  facts and on requests, and the AUROC separating them.

Replies are greedy, 48 bytes at most (enough to tell a refusal from anything else); rates have
Wilson 95 % intervals, bpb a bootstrap over prompts. Writes benchmarks/results/chat.json / .md,
plus a few sampled conversations (the chat command's defaults, seeded) for the README.

    python benchmarks/chat_eval.py                      # the shipped chat checkpoints
    python benchmarks/chat_eval.py --model NAME=CHAT_DIR:BASE_DIR ...   # e.g. runs in progress
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from samples import readme_with  # noqa: E402

from tilelli.chat.abstain import AbstainRule, refusal_scores
from tilelli.chat.dataset import build
from tilelli.chat.session import ChatSession
from tilelli.chat.template import END_BYTE, USER_BYTE, is_refusal, turn
from tilelli.infer import load_decoder
from tilelli.infer.generate import SamplingConfig, generate_batch
from tilelli.infer.score import continuation_logprobs
from tilelli.model.checkpoint_files import SHIPPED_DIR, read_config
from tilelli.train.evaluate import bootstrap_ci
from tilelli.train.stats import wilson_interval
from tilelli.train.trainer import cpu_name

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = ("<!-- chat:start (benchmarks/chat_eval.py writes this block) -->", "<!-- chat:end -->")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHIPPED = {"tilelli-chat-lite-ternary": "tilelli-lite-ternary", "tilelli-chat-lite-fp32": "tilelli-lite-fp32",
           "tilelli-chat-vanilla-fp32": "vanilla-fp32"}
GREEDY = SamplingConfig(max_new_tokens=48, temperature=0.0, stop=(END_BYTE, USER_BYTE))
SAMPLE_PROMPTS = ("Tell me a story about a cat.", "What is the capital of Peru?",
                  "Can you tell me a story about a brave little dog?", "who wrote war and peace",
                  "Hi, how are you?", "What is 12 + 30?")
SAMPLING = SamplingConfig(max_new_tokens=400, temperature=0.7, top_p=0.9, seed=0)


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (so that chat.json is portable)."""
    root = Path(__file__).resolve().parents[1]
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


def rate(flags: list[bool]) -> dict:
    k, n = int(sum(flags)), len(flags)
    if n == 0:  # only with --limit
        return {"rate": float("nan"), "ci": [float("nan")] * 2, "k": 0, "n": 0}
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n, "ci": [lo, hi], "k": k, "n": n}


def auroc(positive: list[float], negative: list[float]) -> float:
    """P(score of a random positive > a random negative), ties counted half (Mann-Whitney)."""
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def refusals(decoder, prompts: list[str], bans: list[tuple[int, ...]] | None = None) -> list[bool]:
    """Is the greedy reply to each prompt the refusal (with its first bytes banned, if given)?"""
    cfgs = [replace(GREEDY, ban_first=b) for b in bans] if bans else GREEDY
    outs = generate_batch(decoder, [turn(p) for p in prompts], cfgs)
    return [is_refusal(text.decode("utf-8", "replace")) for text, _, _ in outs]


def decisions(decoder, rule: AbstainRule | None, prompts: list[str]) -> tuple[list[bool], list[bool], list[float]]:
    """Refused or not under the greedy decision (the reply says it) and under the calibrated rule
    (as `tilelli chat` decides); and the abstain probability of each prompt."""
    scores = refusal_scores(decoder, [turn(p) for p in prompts])
    greedy = refusals(decoder, prompts)
    if rule is None:
        return greedy, greedy, [s.probability for s in scores]
    answered = [i for i, s in enumerate(scores) if not rule.abstains(s)]
    ruled = [True] * len(prompts)
    for i, refused in zip(answered, refusals(decoder, [prompts[i] for i in answered],
                                             [rule.answer_ban()] * len(answered)), strict=True):
        ruled[i] = refused
    return greedy, ruled, [s.probability for s in scores]


def reply_bpb(decoder, contexts: list[bytes], replies: list[bytes]) -> dict:
    logps = continuation_logprobs(decoder, contexts, replies)
    sums = np.array([-lp.sum() for lp in logps])
    counts = np.array([len(lp) for lp in logps])
    lo, hi = bootstrap_ci(sums, counts)
    ln2 = math.log(2)
    return {"bpb": float(sums.sum() / counts.sum()) / ln2, "ci": [lo / ln2, hi / ln2], "bytes": int(counts.sum())}


def refusal_rates(facts: list[dict], requests: list[dict], other: list[dict], fact_refused: list[bool],
                  request_refused: list[bool], other_refused: list[bool]) -> dict:
    def seen(rows: list[dict], flags: list[bool], key: str, want: object) -> list[bool]:
        return [f for r, f in zip(rows, flags, strict=True) if r[key] == want]

    return {
        "facts_refused": {"all": rate(fact_refused), "seen_form": rate(seen(facts, fact_refused, "seen_form", True)),
                          "unseen_form": rate(seen(facts, fact_refused, "seen_form", False))},
        "requests_refused": {"all": rate(request_refused),
                             "seen_template": rate(seen(requests, request_refused, "seen_template", True)),
                             "unseen_template": rate(seen(requests, request_refused, "seen_template", False))},
        "other_refused": {k: rate(seen(other, other_refused, "kind", k)) for k in sorted({o["kind"] for o in other})},
    }


def measure(name: str, chat_dir: Path, base_dir: Path, data: Path, threads: int, limit: int = 0) -> dict:
    def read(f: str) -> list[dict]:
        rows = [json.loads(line) for line in (data / "eval" / f).read_text().splitlines()]
        return rows[:: max(1, len(rows) // limit)][:limit] if limit else rows  # spread over the kinds

    facts, requests, other = read("facts.jsonl"), read("requests.jsonl"), read("other.jsonl")
    cfg = read_config(chat_dir)
    t0 = time.time()
    decoder = load_decoder(chat_dir, threads=threads)
    rule = AbstainRule.load(chat_dir)
    fact_greedy, fact_refused, p_facts = decisions(decoder, rule, [f["prompt"] for f in facts])
    request_greedy, request_refused, p_requests = decisions(decoder, rule, [r["prompt"] for r in requests])
    other_greedy, other_refused, _ = decisions(decoder, rule, [o["prompt"] for o in other])
    references = [r["reference"].encode() for r in requests]
    chat_bpb = reply_bpb(decoder, [turn(r["prompt"]) for r in requests], references)
    base = load_decoder(base_dir, threads=threads)
    base_bpb = reply_bpb(base, [(r["prompt"] + "\n").encode() for r in requests], references)
    session = ChatSession(decoder, SAMPLING, rule)
    samples = []
    for prompt in SAMPLE_PROMPTS:
        session.reset()
        reply = session.reply(prompt)
        samples.append({"prompt": prompt, "reply": reply.text, "abstained": reply.abstained,
                        "abstain_probability": reply.abstain_probability, "confidence": reply.confidence})
    return {
        "name": name, "checkpoint": shown(chat_dir), "base": shown(base_dir), "config": cfg["model"]["arch"],
        "weights": "packed trits" if cfg["packed"] else cfg["weights_dtype"],
        "ternary": bool(cfg["model"]["ternary"]["quantize"]), "step": cfg.get("step"),
        "rule": None if rule is None else {"threshold": rule.threshold, "alpha": rule.alpha,
                                           "calibration": rule.record.get("calibration")},
        **refusal_rates(facts, requests, other, fact_refused, request_refused, other_refused),
        "greedy_decision": refusal_rates(facts, requests, other, fact_greedy, request_greedy, other_greedy),
        "abstain_probability": {"mean_facts": float(np.nanmean(p_facts)),
                                "mean_requests": float(np.nanmean(p_requests)),
                                "auroc_facts_vs_requests": auroc(p_facts, p_requests)},
        "reply_bpb": {"chat": chat_bpb, "base": base_bpb, "ratio": chat_bpb["bpb"] / base_bpb["bpb"]},
        "samples": samples, "seconds": round(time.time() - t0, 1),
    }


def pct(r: dict) -> str:
    return f"{100 * r['rate']:.1f} % ({100 * r['ci'][0]:.1f}–{100 * r['ci'][1]:.1f})"


def decided(r: dict) -> list[tuple[str, dict]]:
    """(label, rates) of each decision measured for a model row: the rule first, as it ships."""
    if r.get("rule") is None:
        return [("greedy reply", r)]
    return [(f"P(refusal) > {r['rule']['threshold']:.3f}", r), ("greedy reply", r["greedy_decision"])]


def markdown(result: dict) -> str:
    rows = result["models"]
    lines = [f"Held-out chat prompts; rates with Wilson 95 % intervals. {result['machine']}. Decisions: the "
             "checkpoint's calibrated rule (what `tilelli chat` and `serve` do: refuse when P(refusal) exceeds a "
             "split-conformal threshold from `tilelli calibrate` on other valid-slice requests), and for "
             "comparison the greedy reply (refused when it is the refusal).", "",
             f"| model | weights | decision | refuses held-out facts (n={rows[0]['facts_refused']['all']['n']}) "
             f"| unseen phrasings | false refusals, story requests (n={rows[0]['requests_refused']['all']['n']}) "
             "| unseen templates | reply bpb chat / base | abstain-prob AUROC |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["reply_bpb"]
        for label, d in decided(r):
            lines.append(f"| `{r['name']}` | {r['weights']} | {label} | {pct(d['facts_refused']['all'])} | "
                         f"{pct(d['facts_refused']['unseen_form'])} | {pct(d['requests_refused']['all'])} | "
                         f"{pct(d['requests_refused']['unseen_template'])} | "
                         f"{b['chat']['bpb']:.3f} / {b['base']['bpb']:.3f} ({100 * (b['ratio'] - 1):+.1f} %) | "
                         f"{r['abstain_probability']['auroc_facts_vs_requests']:.3f} |")
    kinds = list(rows[0]["other_refused"])
    lines += ["", "Refusals of prompts it was never taught to refuse (n=50 each):", "",
              "| model | decision | " + " | ".join(kinds) + " |", "|---|---|" + "---:|" * len(kinds)]
    for r in rows:
        for label, d in decided(r):
            lines.append(f"| `{r['name']}` | {label} | " + " | ".join(pct(d["other_refused"][k]) for k in kinds) + " |")
    return "\n".join(lines) + "\n"


def samples_markdown(result: dict) -> str:
    out = []
    for r in result["models"]:
        out.append(f"**`{r['name']}`** (temperature 0.7, top-p 0.9, seed 0):\n")
        for s in r["samples"]:
            mark = " *(abstained)*" if s["abstained"] else ""
            reply = s["reply"].strip().replace("\n", " ")
            out.append(f"> **you:** {s['prompt']}  \n> **tilelli:** {reply}{mark}\n")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=CHAT_DIR:BASE_DIR",
                    help="measure this chat checkpoint against its base (repeatable); default: the shipped ones")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all available)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where chat.json / chat.md go")
    ap.add_argument("--limit", type=int, default=0,
                    help="only N prompts of each set, spread over it: a quick look, never for publishing")
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's chat block")
    ap.add_argument("--keep", action="store_true",
                    help="keep the rows of chat.json for the models not measured now (measure one model at a time)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"error: {SHARED} is missing; this benchmark needs ../shared/data")
    models = []
    for spec in args.model:
        name, _, dirs = spec.partition("=")
        chat, _, base = dirs.partition(":")
        models.append((name, Path(chat), Path(base)))
    if not models:
        models = [(c, SHIPPED_DIR / c, SHIPPED_DIR / b) for c, b in SHIPPED.items()]
    with tempfile.TemporaryDirectory() as tmp:
        meta = build(SHARED, Path(tmp) / "chat")
        rows = [measure(n, c, b, Path(tmp) / "chat", args.threads, args.limit) for n, c, b in models]
    if args.keep and (args.out / "chat.json").is_file():
        kept = json.loads((args.out / "chat.json").read_text())
        if kept["data"]["train_sha256"] != meta["train"]["sha256"] or kept.get("limit") != args.limit:
            sys.exit("error: --keep: chat.json was measured on another chat set or --limit; measure every model")
        new = {r["name"]: r for r in rows}
        rows = [new.pop(r["name"], r) for r in kept["models"]] + list(new.values())
    result = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "limit": args.limit,
              "data": {"train_sha256": meta["train"]["sha256"], "valid_sha256": meta["valid"]["sha256"],
                       "held_out": meta["held_out"]}, "models": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chat.json").write_text(json.dumps(result, indent=1) + "\n")
    block = markdown(result) + "\n" + samples_markdown(result)
    (args.out / "chat.md").write_text(block)
    if args.readme:
        README.write_text(readme_with(block, README.read_text(), MARKERS))
    print(block)


if __name__ == "__main__":
    main()
