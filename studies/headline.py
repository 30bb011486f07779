"""The README's headline table: each shipped base model and its chat model in one row, every
number read from a study's JSON record, every column linked to its full results; the speed
table (Tilelli over llama.cpp, and batching and prefill within Tilelli); and the default chat
model's sample conversation, read from the chat study's record.

The README holds no other result: this is what keeps each of its numbers tied to a record that a
check script re-measures (quality: studies.quality.check_quality; decoding:
studies.speed.check_decode; peers: studies.speed.check_peers; chat: the chat study's check).

    python -m studies.headline            # rewrite the README's headline block
    python -m studies.headline --check    # exit 1 when the README's block is not what the records give
"""

from __future__ import annotations

import argparse
import json
import sys

from studies.common import README, ROOT, block_with
from tilelli.model.checkpoint_files import CHAT_PREFIX, DEFAULT_MODEL

MARKERS = ("<!-- headline:start (python -m studies.headline writes this block) -->", "<!-- headline:end -->")
CONVERSATION_MARKERS = ("<!-- conversation:start (python -m studies.headline writes this block) -->",
                        "<!-- conversation:end -->")
SPEED_MARKERS = ("<!-- speed:start (python -m studies.headline writes this block) -->", "<!-- speed:end -->")
RECORDS = {"quality": "studies/quality/results/quality.json", "decode": "studies/speed/results/decode_speed.json",
           "chat": "studies/chat/results/chat.json", "peers": "studies/speed/results/peers.json"}


def chat_name(base: str) -> str:
    """The shipped chat model fine-tuned from shipped base model `base`."""
    return CHAT_PREFIX + base.removeprefix("tilelli-")


def table(quality: dict, decode: dict, chat: dict) -> str:
    chats = {m["name"]: m for m in chat["models"]}
    lines = ["| model | stored as | valid bpb, 95 % CI ([quality](docs/results/quality.md)) | decoding, batch 1 "
             "([speed](docs/results/decode_speed.md)) | its chat model refuses held-out facts "
             "([chat](docs/results/chat.md)) | … and story requests (false refusals) |",
             "|---|---|---|---:|---:|---:|"]
    for row in sorted(quality["rows"], key=lambda r: r["name"] != DEFAULT_MODEL):
        name, v = row["name"], row["valid"]
        stored = (f"trits, {row['bits_per_weight']:.2f} bits/weight" if row["weights"] == "packed trits"
                  else row["weights"]) + f", {row['checkpoint_kb']:,} KB"
        speed = decode["models"][name]
        c = chats[chat_name(name)]["refused"]
        lines.append(f"| `{name}`{' (default)' if name == DEFAULT_MODEL else ''} | {stored} | "
                     f"{v['bpb']:.3f} ({v['ci'][0]:.3f}–{v['ci'][1]:.3f}) | {speed['fast_b1']:,.0f} bytes/s, "
                     f"{speed['fast_b1_vs_reference']:.1f}x a PyTorch GPT | {c['fact']['single']['rate']:.1%} | "
                     f"{c['request']['single']['rate']:.1%} |")
    return "\n".join(lines) + "\n"


def speed(peers: dict, decode: dict) -> str:
    """The peer ratios per column (targets: 1.5x the fastest quantized type for the ternary model,
    1x BF16 for the bf16 ones), then the default model's batching and prefill gains."""
    from studies.speed.peers import COLUMNS, HEADINGS
    from tilelli.infer.bench import cpu_line

    loads = [x for x in peers["loads_1min"] if x is not None]
    lines = [f"Tilelli over llama.cpp (`python -m studies.speed.peers`; [peers](docs/results/peers.md): the "
             f"bytes/s, RSS, llama.cpp's build) on a same-size model, {cpu_line(peers['machine'])}, median of "
             f"{peers['repeats']} shuffled rounds, 1-minute load {min(loads):.1f}-{max(loads):.1f} at round starts; "
             "t = threads:", "",
             "| Tilelli / llama.cpp (target) | " + " | ".join(f"{HEADINGS[k]}, {t}t" for _, k, t in COLUMNS) + " |",
             "|---" + "|---:" * len(COLUMNS) + "|"]
    for what, cols in sorted(peers["ratios"].items(), key=lambda kv: not kv[0].startswith(f"{DEFAULT_MODEL} --int8")):
        model, _, peer = what.partition(" / ")
        label = {f"{DEFAULT_MODEL} --int8": f"`{DEFAULT_MODEL}` (default: the integer path)",
                 DEFAULT_MODEL: f"`{DEFAULT_MODEL}` --no-int8 (the float path)"}.get(model, f"`{model}` (bf16)")
        target = "1.5x" if model.startswith(DEFAULT_MODEL) else "1x"
        cells = " | ".join(f"{c['ratio']:.2f}x" + (f" {c['best']}" if "best" in c else "") for c in cols.values())
        lines.append(f"| {label} / {peer.removeprefix('llama.cpp ')} ({target}) | {cells} |")
    r = decode["models"][DEFAULT_MODEL]
    lines += ["", f"Within Tilelli (`tilelli bench`, {decode['threads']} threads; "
              f"[decode_speed](docs/results/decode_speed.md)), the default model: 8 sequences give "
              f"{r['fast_b8_vs_b1']:.2f}x the bytes/s of one, a {r['prefill_bytes']:,}-byte prompt "
              f"{r['prefill_vs_b1']:.2f}x batch-1 decoding (targets 4x), decoding at position {r['far_position']:,} "
              f"{r['far_vs_50']:.2f}x position 50 (target 0.7x)."]
    return "\n".join(lines) + "\n"


def rendered() -> str:
    records = {k: json.loads((ROOT / path).read_text()) for k, path in RECORDS.items()}
    return table(records["quality"], records["decode"], records["chat"])


def conversation() -> str:
    """The default chat model's scripted conversation (the chat study's `script`), as a quote."""
    chat = json.loads((ROOT / RECORDS["chat"]).read_text())
    model = next(m for m in chat["models"] if m["name"] == chat_name(DEFAULT_MODEL))
    lines = []
    for turn in model["script"]:
        mark = f" *(abstained: {turn['reason'] or 'refusal'})*" if turn["abstained"] else ""
        reply = turn["reply"].strip().replace("\n", " ")
        lines.append(f"> **you:** {turn['prompt']}  \n> **tilelli:** {reply}{mark}\n>")
    return "\n".join(lines)[:-2] + "\n"


def with_records(readme: str) -> str:
    """The README with its blocks as the records give them."""
    records = {k: json.loads((ROOT / path).read_text()) for k, path in RECORDS.items()}
    readme = block_with(speed(records["peers"], records["decode"]), readme, SPEED_MARKERS)
    return block_with(conversation(), block_with(rendered(), readme, MARKERS), CONVERSATION_MARKERS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when they differ")
    args = ap.parse_args()
    readme = README.read_text()
    want = with_records(readme)
    if args.check:
        if readme != want:
            print("FAIL the README's headline table, speed table or sample conversation is not what the records give: "
                  "run python -m studies.headline", file=sys.stderr)
            return 1
        print("ok   the README's headline table, speed table and sample conversation are what the records give")
        return 0
    README.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
