"""Readers for the chat, QA and story files under `shared/data/` (see its README for licences).

Each reader returns plain Python records and knows one file format; which records go where
(train or held-out, answered or refused) is decided in `tilelli.chat.dataset`.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from tilelli.errors import TilelliError

NAME, AUTHOR = "Tilelli", "the Tilelli developers"  # for the identity set's {{name}} / {{author}}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise TilelliError(f"cannot read {path}: {e.strerror}; is --shared the shared/data directory?") from e


def tinystories(path: Path) -> list[str]:
    """Stories of a TinyStories train slice (separated by `<|endoftext|>` lines)."""
    return [s.strip() for s in _read(path).split("<|endoftext|>") if s.strip()]


_STORY_START = re.compile(r"^(Once upon a time|Once there was|One day|There once was)")


def tinystories_valid(path: Path) -> list[str]:
    """Stories of the valid slice, which has no delimiters: paragraphs are grouped into a story
    from one that opens like a story ("Once upon a time", "One day", ...) to the next."""
    stories: list[list[str]] = []
    for para in re.split(r"\n\s*\n", _read(path)):
        para = para.strip()
        if not para:
            continue
        if _STORY_START.match(para) or not stories:
            stories.append([])
        stories[-1].append(para)
    return ["\n\n".join(s) for s in stories]


def facts(qa_dir: Path, chat_dir: Path) -> list[tuple[str, str]]:
    """World-fact questions as (question, source): NQ-open (both dev files), TruthfulQA, and
    the ChatterBot trivia list."""
    out = []
    for name in ("NQ-open.dev.jsonl", "NQ-open.efficientqa.dev.1.1.jsonl"):
        out += [(json.loads(line)["question"], "nq-open") for line in _read(qa_dir / name).splitlines() if line]
    rows = csv.DictReader(_read(qa_dir / "TruthfulQA.csv").splitlines())
    out += [(row["Question"], "truthfulqa") for row in rows]
    trivia = _chatterbot(chat_dir / "chatterbot_corpus_english" / "trivia.yml")
    out += [(conv[0], "chatterbot-trivia") for conv in trivia]
    return out


def _chatterbot(path: Path) -> list[list[str]]:
    import yaml  # PyYAML: the ChatterBot corpus is YAML, and only this reader needs it

    data = yaml.safe_load(_read(path)) or {}
    return [[str(t).strip() for t in conv] for conv in data.get("conversations", []) if len(conv) >= 2]


def chatterbot_dialogues(chat_dir: Path, categories: tuple[str, ...]) -> list[list[tuple[str, str]]]:
    """ChatterBot conversations of the given categories (file stems: "greetings", ...), as lists
    of turns. Only small-talk categories belong in a story bot's chat set: the factual ones
    (trivia, history, science, coding, ...) would teach it to answer what it should refuse."""
    out = []
    for name in categories:
        for conv in _chatterbot(chat_dir / "chatterbot_corpus_english" / f"{name}.yml"):
            out.append([(conv[i], conv[i + 1]) for i in range(0, len(conv) - 1, 2)])
    return out


def instructions(chat_dir: Path) -> list[tuple[str, str, str]]:
    """(request, answer, source) from the permissively licensed instruction sets: Self-Instruct's
    user-oriented set and the Alpaca seed tasks (both written by people, Apache-2.0), and the
    identity set (Apache-2.0) with its placeholders filled in. The CC BY-NC sets are not read."""
    out = []
    for name, source in (("self_instruct_user_oriented_instructions.jsonl", "self-instruct"),
                         ("alpaca_seed_tasks.jsonl", "alpaca-seed")):
        for line in _read(chat_dir / name).splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            inst = rec["instances"][0]
            request = rec["instruction"].strip() + (("\n\n" + inst["input"].strip()) if inst["input"].strip() else "")
            out.append((request, inst["output"].strip(), source))
    for rec in json.loads(_read(chat_dir / "llamafactory_identity.json")):
        answer = rec["output"].replace("{{name}}", NAME).replace("{{author}}", AUTHOR)
        out.append((rec["instruction"].strip(), answer, "identity"))
    return out
