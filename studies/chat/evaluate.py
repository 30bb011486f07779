"""Does the chat model answer what it can and abstain from what it cannot, in conversation too?

For every chat checkpoint, on the held-out sets of `tilelli prepare-chat` (rebuilt here from
../shared/data and checked to hash to what the runs trained on), each prompt is decided and
answered exactly as a `tilelli chat` session would (`conversation_prompt`, `decide`, the chat
sampling defaults with a seed per prompt):

- **kinds**: world-fact questions (should be refused), story requests from template families
  never trained on nor calibrated on, small talk in phrasings never seen (both should be
  answered), gibberish, other languages, code, arithmetic (never taught; should be refused);
- **contexts**: alone, and as the third turn of a conversation after a story, after a refusal,
  after small talk; plus follow-ups after a story ("another one about ...", a character's
  name), which should be answered;
- **clean replies**: answers holding 12 or more bytes of a refusal, replies that are not valid
  UTF-8, story answers that end on their own (END before the limit);
- **answer quality**: bits per byte of the reference stories given their request, chat model
  (chat template) vs its base model (the request, a newline, then the story);
- **signals**: AUROC of the refusal probability and of the surprise, answerable vs not.

Rates have Wilson 95 % intervals; bpb a bootstrap over prompts. The teacher-forced passes run
on the PyTorch path by default (`--score-engine`), always on the float path; the answers on the
native engine, on its default path (the integer path for a ternary model, as `tilelli chat`). Writes
studies/chat/results/chat.json and docs/results/chat.md, with a scripted conversation per model.

    python -m studies.chat.evaluate                                 # the shipped chat checkpoints
    python -m studies.chat.evaluate --model NAME=CHAT_DIR:BASE_DIR  # e.g. runs in progress (repeatable)
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

from studies.common import SHARED, add_output_args, publish, results_dir, shown
from tilelli.chat.abstain import REASONS, AbstainRule, Decision, answer_sampling, measure
from tilelli.chat.dataset import build
from tilelli.chat.defaults import CHAT_SAMPLING
from tilelli.chat.session import ChatSession, conversation_prompt
from tilelli.chat.template import turn
from tilelli.infer import load_decoder
from tilelli.infer.generate import generate_batch
from tilelli.infer.score import continuation_logprobs
from tilelli.model.checkpoint_files import SHIPPED_DIR, read_config
from tilelli.train.evaluate import bootstrap_ci
from tilelli.train.stats import wilson_interval
from tilelli.train.trainer import cpu_name

RESULTS = results_dir(__file__)
SHIPPED = {"tilelli-chat-lite-ternary": "tilelli-lite-ternary", "tilelli-chat-lite-fp32": "tilelli-lite-fp32",
           "tilelli-chat-vanilla-fp32": "vanilla-fp32"}
SETS = ("facts", "requests", "small_talk", "other", "conversation")
ANSWERABLE = ("request", "small_talk", "follow_up")
KINDS = ("fact", "request", "small_talk", "follow_up", "gibberish", "language", "code", "arithmetic")
CONTEXTS = ("single", "after_story", "after_refusal", "after_small_talk")
BATCH = 16  # sequences decoded together, as the server's default max_batch
QUOTE = 12  # an answer holding this many bytes of a refusal has leaked it
SCRIPT = ("Hi!", "Tell me a story about a cat.", "What is the capital of Peru?",
          "Now tell me a story about a dog.", "Thank you!")


def rate(flags: list[bool]) -> dict:
    k, n = int(sum(flags)), len(flags)
    if n == 0:
        return {"rate": None, "ci": [None, None], "k": 0, "n": 0}
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n, "ci": [lo, hi], "k": k, "n": n}


def auroc(positive: list[float], negative: list[float]) -> float:
    """P(score of a random positive > a random negative), ties counted half (Mann-Whitney)."""
    pos = np.asarray([p for p in positive if not math.isnan(p)])[:, None]
    neg = np.asarray([n for n in negative if not math.isnan(n)])[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def leaked(answer: bytes) -> bool:
    """The answer holds QUOTE consecutive bytes of a refusal."""
    texts = [t.encode("utf-8") for t in REASONS.values()]
    return any(t[i:i + QUOTE] in answer for t in texts for i in range(len(t) - QUOTE + 1))


def valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def reply_bpb(decoder, contexts: list[bytes], replies: list[bytes]) -> dict:
    logps = continuation_logprobs(decoder, contexts, replies)
    sums = np.array([-lp.sum() for lp in logps])
    counts = np.array([len(lp) for lp in logps])
    lo, hi = bootstrap_ci(sums, counts)
    ln2 = math.log(2)
    return {"bpb": float(sums.sum() / counts.sum()) / ln2, "ci": [lo / ln2, hi / ln2], "bytes": int(counts.sum())}


def run_rows(decoder, scorer, rule: AbstainRule | None, rows: list[dict]) -> list[dict]:
    """Decide and answer every row as a chat session would (signals from `scorer`, answers from
    `decoder`); one result dict per row."""
    prompts = [conversation_prompt([tuple(t) for t in r["history"]], r["prompt"], decoder.max_seq_len)[0]
               for r in rows]
    signals = measure(scorer, prompts)
    decisions = [rule.decide(s) if rule is not None else Decision(False, None, s) for s in signals]
    todo = [i for i, d in enumerate(decisions) if not d.abstain]
    answers = []
    for first in range(0, len(todo), BATCH):  # a batch's caches stay small: BATCH sequences at a time
        some = todo[first:first + BATCH]
        answers += generate_batch(decoder, [prompts[i] for i in some],
                                  [replace(answer_sampling(CHAT_SAMPLING, rule), seed=i) for i in some])
    out = []
    for r, d in zip(rows, decisions, strict=True):
        out.append({"kind": r["kind"], "context": r["context"], "refusal": d.signals.top_refusal,
                    "surprise": d.signals.text_surprise, "score": rule.refusal_score(d.signals) if rule else math.nan,
                    "abstained": d.abstain, "reason": d.reason})
    for i, (data, _, stop) in zip(todo, answers, strict=True):
        text = data.decode("utf-8", "replace")
        out[i].update(abstained=decisions[i].abstained(text), answer_bytes=len(data), stop=stop,
                      leaked=leaked(data), valid_utf8=valid_utf8(data))
        if "answer" in rows[i]:
            out[i]["name_right"] = rows[i]["answer"] in text
    return out


def summarise(results: list[dict]) -> dict:
    """Refusal rates by kind and context, and the clean-reply counts."""
    by = {}
    for kind in KINDS:
        mine = [r for r in results if r["kind"] == kind]
        if not mine:
            continue
        by[kind] = {c: rate([r["abstained"] for r in mine if r["context"] == c]) for c in CONTEXTS}
        by[kind]["conversation"] = rate([r["abstained"] for r in mine if r["context"] != "single"])
        by[kind]["fact_reason"] = rate([r["reason"] == "fact" for r in mine if r["abstained"]])
    answers = [r for r in results if "answer_bytes" in r]
    stories = [r for r in answers if r["kind"] == "request"]
    names = [r["name_right"] for r in answers if "name_right" in r]
    answerable = [r for r in results if r["kind"] in ANSWERABLE]
    unanswerable = [r for r in results if r["kind"] not in ANSWERABLE]
    return {
        "refused": by,
        "answers": len(answers),
        "answers_leaking_refusal": sum(r["leaked"] for r in answers),
        "answers_invalid_utf8": sum(not r["valid_utf8"] for r in answers),
        "stories_ending_on_their_own": rate([r["stop"] == "stop" for r in stories]),
        "story_bytes_median": float(np.median([r["answer_bytes"] for r in stories])) if stories else None,
        "name_follow_ups_right": rate(names),
        "auroc": {s: auroc([r[s] for r in unanswerable], [r[s] for r in answerable])
                  for s in ("refusal", "surprise", "score")},
    }


def requests_bpb(decoder, requests: list[dict]) -> dict:
    """Bits per byte of held-out requests' reference stories, each given its request as a chat turn."""
    return reply_bpb(decoder, [turn(r["prompt"]) for r in requests], [r["reference"].encode() for r in requests])


def measure_model(name: str, chat_dir: Path, base_dir: Path, data: Path, threads: int, limit: int = 0,
                  score_engine: str = "torch") -> dict:
    def read(f: str) -> list[dict]:
        rows = [json.loads(line) for line in (data / "eval" / f"{f}.jsonl").read_text().splitlines()]
        return rows[:: max(1, len(rows) // limit)][:limit] if limit else rows  # spread over the kinds

    rows = [r for s in SETS for r in read(s)]
    cfg = read_config(chat_dir)
    t0 = time.time()
    decoder = load_decoder(chat_dir, threads=threads)
    scorer = load_decoder(chat_dir, score_engine, threads, int8=False)
    rule = AbstainRule.load(chat_dir)
    results = run_rows(decoder, scorer, rule, rows)
    requests = read("requests")
    references = [r["reference"].encode() for r in requests]
    chat_bpb = requests_bpb(scorer, requests)
    base_bpb = reply_bpb(load_decoder(base_dir, score_engine, threads, int8=False),
                         [(r["prompt"] + "\n").encode() for r in requests], references)
    session = ChatSession(decoder, replace(CHAT_SAMPLING, seed=0), rule)
    script = []
    for text in SCRIPT:
        reply = session.reply(text)
        script.append({"prompt": text, "reply": reply.text, "abstained": reply.abstained, "reason": reply.reason})
    return {
        "name": name, "checkpoint": shown(chat_dir), "base": shown(base_dir), "config": cfg["model"]["arch"],
        "weights": "packed trits" if cfg["packed"] else cfg["weights_dtype"],
        "rule": None if rule is None else {"refusal_threshold": rule.refusal_threshold,
                                           "surprise_threshold": rule.surprise_threshold, "alpha": rule.alpha,
                                           "calibration": rule.record.get("calibration"),
                                           "detector": None if rule.detector is None else rule.detector.record},
        **summarise(results),
        "reply_bpb": {"chat": chat_bpb, "base": base_bpb, "ratio": chat_bpb["bpb"] / base_bpb["bpb"]},
        "script": script, "prompts": len(rows), "score_engine": score_engine, "seconds": round(time.time() - t0, 1),
    }


def pct(r: dict) -> str:
    if not r["n"]:
        return "—"
    return f"{100 * r['rate']:.1f} % ({100 * r['ci'][0]:.1f}–{100 * r['ci'][1]:.1f}, n={r['n']})"


def alpha_text(alpha: float | dict) -> str:
    """0.03, or "requests 0.03, small talk 0.05" for a rule calibrated kind by kind."""
    if not isinstance(alpha, dict):
        return f"{alpha:g}"
    return ", ".join(f"{k.replace('_', ' ')}{'s' if k == 'request' else ''} {a:g}" for k, a in alpha.items())


def markdown(result: dict) -> str:
    rows = result["models"]
    lines = [f"Held-out prompts, decided and answered as `tilelli chat` does (each checkpoint's calibrated rule; "
             f"chat sampling, seed per prompt). Refusal rates, Wilson 95 % intervals. {result['machine']}.", ""]
    for r in rows:
        rule = r["rule"]
        score = "P(refusal)" if rule is None or rule.get("detector") is None else "detector log-odds"
        how = ("greedy decision (no rule)" if rule is None else
               f"{score} > {rule['refusal_threshold']:.3f} or surprise > {rule['surprise_threshold']:.2f} "
               f"bits/byte (alpha {alpha_text(rule['alpha'])})")
        lines += [f"**`{r['name']}`** ({r['weights']}; {how})", "",
                  "| kind (should be) | alone | after a story | after a refusal | after small talk | in conversation |",
                  "|---|---:|---:|---:|---:|---:|"]
        for kind, d in r["refused"].items():
            want = "answered" if kind in ANSWERABLE else "refused"
            lines.append(f"| {kind.replace('_', ' ')} ({want}) | " + " | ".join(pct(d[c]) for c in CONTEXTS)
                         + f" | {pct(d['conversation'])} |")
        b = r["reply_bpb"]
        lines += ["", f"Answers: {r['answers']}; holding 12+ bytes of a refusal: {r['answers_leaking_refusal']}; "
                  f"invalid UTF-8: {r['answers_invalid_utf8']}; stories ending on their own: "
                  f"{pct(r['stories_ending_on_their_own'])} (median {r['story_bytes_median']:.0f} bytes); "
                  f"character names right: {pct(r['name_follow_ups_right'])}. Reply bpb, chat / base: "
                  f"{b['chat']['bpb']:.3f} / {b['base']['bpb']:.3f} ({100 * (b['ratio'] - 1):+.1f} %). "
                  f"AUROC, unanswerable vs answerable: refusal probability {r['auroc']['refusal']:.3f}, "
                  f"surprise {r['auroc']['surprise']:.3f}, the rule's refusal score {r['auroc']['score']:.3f}.", ""]
    for name, p in result.get("previous", {}).items():
        lines.append(f"Reply bpb of the previous `{name}` ({p['checkpoint']}) on the same references: "
                     f"{p['reply_bpb']['bpb']:.3f} ({p['reply_bpb']['ci'][0]:.3f}–{p['reply_bpb']['ci'][1]:.3f}).")
    return "\n".join(lines) + "\n"


def page_of(result: dict) -> str:
    """docs/results/chat.md: the tables, then each model's scripted conversation."""
    return "# Chat decisions\n\n" + markdown(result) + "\n" + script_markdown(result)


def script_markdown(result: dict) -> str:
    out = []
    for r in result["models"]:
        out.append(f"**`{r['name']}`** (one conversation; temperature 0.7, top-p 0.9, seed 0):\n")
        for s in r["script"]:
            mark = f" *(abstained: {s['reason'] or 'refusal'})*" if s["abstained"] else ""
            reply = s["reply"].strip().replace("\n", " ")
            out.append(f"> **you:** {s['prompt']}  \n> **tilelli:** {reply}{mark}\n")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=CHAT_DIR:BASE_DIR",
                    help="measure this chat checkpoint against its base (repeatable); default: the shipped ones")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all available)")
    ap.add_argument("--score-engine", choices=("auto", "torch"), default="torch",
                    help="decoder of the teacher-forced passes (signals, reply bpb); answers are always generated "
                         "by the default decoder. torch (default): its batched prefill is ~3x the native "
                         "engine's here, and its signals agree with the engine's within 1e-3 (tests/test_chat.py)")
    add_output_args(ap, RESULTS)
    ap.add_argument("--limit", type=int, default=0,
                    help="only N prompts of each set, spread over it: a quick look, never for publishing")
    ap.add_argument("--previous", action="append", default=[], metavar="NAME=CHAT_DIR",
                    help="also the reply bpb of an earlier chat checkpoint on the same references (repeatable): "
                         "the 'no worse than before' comparison")
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
        rows = []
        for n, c, b in models:
            rows.append(measure_model(n, c, b, Path(tmp) / "chat", args.threads, args.limit, args.score_engine))
            print(f"{n}: {rows[-1]['seconds']} s", file=sys.stderr, flush=True)
        requests = [json.loads(line) for line in (Path(tmp) / "chat" / "eval" / "requests.jsonl").open()]
        previous = {name: {"checkpoint": d,
                           "reply_bpb": requests_bpb(load_decoder(d, args.score_engine, args.threads, int8=False),
                                                     requests)}
                    for name, _, d in (spec.partition("=") for spec in args.previous)}
    if args.keep and (args.out / "chat.json").is_file():
        kept = json.loads((args.out / "chat.json").read_text())
        if kept["data"]["train_sha256"] != meta["train"]["sha256"] or kept.get("limit") != args.limit:
            sys.exit("error: --keep: chat.json was measured on another chat set or --limit; measure every model")
        new = {r["name"]: r for r in rows}
        rows = [new.pop(r["name"], r) for r in kept["models"]] + list(new.values())
        previous = {**kept.get("previous", {}), **previous}
    result = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "limit": args.limit,
              "data": {"train_sha256": meta["train"]["sha256"], "valid_sha256": meta["valid"]["sha256"],
                       "held_out": meta["held_out"]}, "models": rows, "previous": previous}
    page = page_of(result)
    publish(args, "chat", result, page)
    print(page)


if __name__ == "__main__":
    main()
