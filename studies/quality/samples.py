"""Generation samples of the shipped checkpoints (docs/results/samples.md).

Fixed prompts, fixed sampling settings and a fixed seed, so the text is re-generated exactly
by `studies/quality/check_samples.py` (on this kind of CPU; another CPU's float rounding may flip a byte).
Writes studies/quality/results/samples.json and docs/results/samples.md.

    python -m studies.quality.samples
"""

from __future__ import annotations

import argparse

import torch

from studies.common import add_output_args, publish, results_dir
from tilelli.infer import load_decoder
from tilelli.infer.generate import SamplingConfig, generate
from tilelli.model.checkpoint_files import shipped_base_checkpoints

RESULTS = results_dir(__file__)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_args(ap, RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = samples()
    publish(args, "samples", {"settings": SETTINGS, "samples": rows}, markdown(rows), indent=2)
    print(markdown(rows))


if __name__ == "__main__":
    main()
