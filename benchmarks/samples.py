"""Generation samples of the shipped checkpoints, for the README.

Fixed prompts, fixed sampling settings and a fixed seed, so the text is re-generated exactly
by `reproduce/samples.py` (on this kind of CPU; another CPU's float rounding may flip a byte).
Writes benchmarks/results/samples.json and samples.md, and with --readme replaces the block
between the README's samples markers with samples.md.

    python benchmarks/samples.py --readme
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tilelli.infer import load_decoder
from tilelli.infer.generate import SamplingConfig, generate
from tilelli.model.checkpoint_files import shipped_base_checkpoints

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = ("<!-- samples:start (benchmarks/samples.py writes this block) -->", "<!-- samples:end -->")
PROMPTS = ["Once upon a time", "Tom and his dog went to the park. Tom"]
SETTINGS = {"max_new_tokens": 200, "temperature": 0.8, "top_p": 0.95, "seed": 0}


def samples() -> list[dict]:
    out = []
    for ckpt in shipped_base_checkpoints():  # the chat models' samples come from chat_eval.py
        model = load_decoder(ckpt, threads=2)  # what `tilelli generate` runs: the native engine
        for prompt in PROMPTS:
            text, probs, _ = generate(model, prompt.encode(), SamplingConfig(**SETTINGS))
            out.append({"checkpoint": ckpt.name, "prompt": prompt, "text": text.decode("utf-8", "replace"),
                        "mean_confidence": round(sum(probs) / len(probs), 4)})
    return out


def markdown(rows: list[dict]) -> str:
    s = SETTINGS
    lines = [f"Sampled with temperature {s['temperature']}, top-p {s['top_p']}, seed {s['seed']}, "
             f"{s['max_new_tokens']} new bytes; the prompt is in bold.", ""]
    for r in rows:
        body = (r["prompt"] + r["text"]).replace("\n", " ")
        lines += [f"**`{r['checkpoint']}`** (mean confidence {r['mean_confidence']:.2f}):", "",
                  f"> **{r['prompt']}**{body[len(r['prompt']):]}", ""]
    return "\n".join(lines)


def readme_with(block: str, readme: str, markers: tuple[str, str] = MARKERS) -> str:
    """`readme` with the text between the two marker lines replaced by `block`."""
    start, end = readme.index(markers[0]) + len(markers[0]), readme.index(markers[1])
    return readme[:start] + "\n" + block + readme[end:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's samples block")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = samples()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "samples.json").write_text(json.dumps({"settings": SETTINGS, "samples": rows}, indent=2) + "\n")
    (RESULTS / "samples.md").write_text(markdown(rows))
    if args.readme:
        README.write_text(readme_with(markdown(rows), README.read_text()))
    print(markdown(rows))


if __name__ == "__main__":
    main()
