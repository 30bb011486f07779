"""Build the chat fine-tuning set and its held-out evaluation prompts (`tilelli prepare-chat`).

What the model is taught (all from `shared/data/`, permissive licences only; see its README):
- **stories on request**, from the TinyStories train slices: "Tell me a story about a girl
  named Lily" (the topic read off the story), "... with the words X, Y and Z", and "What happens
  next? <the opening>" -> the rest. These are requests a 10 M story model can really serve.
- **small talk and simple instructions**: ChatterBot dialogues (small-talk categories only,
  `sources.FACTUAL_CATEGORIES` left out), the Self-Instruct user-oriented set, the Alpaca seed
  tasks and the identity set. Requests that read like world-fact questions ("who ...",
  "when ...", "what is the ...") are left out, so they do not teach the model to answer exactly
  what it should refuse; questions about the assistant itself ("Who are you?") stay.
- **abstention**: world-fact questions (NQ-open, TruthfulQA, ChatterBot trivia) -> `REFUSAL`,
  in varied phrasings (lower case, no question mark, "Can you tell me ...", "Do you know ...").

Held out, never trained on:
- `eval/facts.jsonl`: world-fact questions split off *by question*: duplicates (same words after
  normalising) go together, and a training question whose word set overlaps a held-out one by
  Jaccard >= 0.7 is removed from training. Phrased with the training forms and with forms the
  model never saw (`seen_form` says which).
- `eval/requests.jsonl`: story requests built from the TinyStories *valid* slice (text neither
  the base model nor the fine-tuning saw), with their reference reply, in seen and unseen
  templates.
- `eval/other.jsonl`: prompts a 10 M model cannot serve that it was not taught to refuse:
  gibberish, other languages, code, arithmetic (generated here; the language lines are ours).

`train.bin` / `valid.bin` are masked sources (`tilelli.train.data`): the loss is on reply bytes
only, and windows start at a turn. `valid.bin` holds the held-out facts and requests.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tilelli.chat import sources
from tilelli.chat.template import REFUSAL, USER, encode
from tilelli.errors import TilelliError
from tilelli.train.data import mask_path, starts_path
from tilelli.train.paths import check_writable_dir

MAX_EXAMPLE_BYTES = 1000  # prompt + reply of one turn: fits a 1,024-byte window with room to spare
N_HELD_OUT_FACTS = 400
N_HELD_OUT_REQUESTS = 240
N_OTHER_EACH = 50
N_CALIBRATION_REQUESTS = 300  # story requests for the abstain rule's threshold (tilelli.chat.abstain)
NEAR_DUPLICATE = 0.7

FACT_FORMS = ("{Q}?", "{q}", "{q}?", "Can you tell me {q}?", "Do you know {q}?", "Tell me {q}.",
              "Question: {Q}?", "I want to know {q}.")
UNSEEN_FACT_FORMS = ("Quick question: {q}?", "Could you tell me {q}?", "I was wondering, {q}?", "Any idea {q}?")
TOPIC_FORMS = ("Tell me a story about {t}.", "Write a story about {t}.", "Can you tell me a story about {t}?",
               "Do you know a story about {t}?", "tell me a story about {t}", "Please write a short story about {t}.",
               "I want a story about {t}.", "story about {t}")
WORDS_FORMS = ("Tell me a story with the words {w}.", "Write a story that uses the words {w}.",
               "can you write a story with {w}")
NEXT_FORMS = ("What happens next? {s}", "Continue this story: {s}", "Finish the story: {s}", "what happens next: {s}")
UNSEEN_REQUEST_FORMS = {"topic": ("Could you write me a story about {t}?", "I'd love to hear a story about {t}.",
                                  "Make up a story about {t}."),
                        "words": ("Make up a story using {w}.",),
                        "next": ("How does this story go on? {s}",)}
_FACT_LIKE = re.compile(r"^(who|whom|whose|when|where|which)\b|^what (is|was|are|were) the\b"
                        r"|^how (many|much|old|far)\b", re.IGNORECASE)
_NAMED = re.compile(r"\b((?:a|an) (?:[a-z]+ ){0,2}?(?:girl|boy|dog|cat|bird|bunny|rabbit|bear|mouse|fox|frog|duck|lion|"
                    r"fish|puppy|kitten|man|woman|princess|king|queen|dragon|monkey|elephant|owl|squirrel|pig|horse|"
                    r"cow|sheep|ant|bee|butterfly|turtle|car|truck|robot|tree|ball) named [A-Z][a-z]+)")
_THERE_WAS = re.compile(r"[Tt]here (?:was|lived) ((?:a|an) (?:[a-z]+ ){0,2}?[a-z]+)\b(?: who| that|\.|,)")
_ABOUT_YOU = re.compile(r"\b(you|your|yourself)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z]{5,}")
_STOP = frozenset("there their about would could after again before every which while where other little "
                  "happy named said would these those thing things asked shouted smiled looked always".split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Example:
    turns: tuple[tuple[str, str], ...]
    kind: str  # story / instruction / dialogue / refusal
    source: str


def normalise(question: str) -> str:
    """Lower case, letters and digits only, single spaces: the key duplicates share."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", question.lower()).split())


def phrase(question: str, form: str) -> str:
    """A question in one of the FACT_FORMS: {q} lower-first without '?', {Q} capitalised."""
    q = question.strip().rstrip("?").strip()
    lower = q[:1].lower() + q[1:] if q[:2] != "I " else q
    return form.format(q=lower, Q=q[:1].upper() + q[1:])


def fact_like(request: str) -> bool:
    """A world-fact question ("who ...", "when ...", "what is the ..."), not one about the assistant."""
    return bool(_FACT_LIKE.match(request.strip())) and not _ABOUT_YOU.search(request)


def story_topic(story: str) -> str | None:
    """A topic a request can name, read off the story ("a little girl named Lily"), or None."""
    head = story[:400]
    for pattern in (_NAMED, _THERE_WAS):
        m = pattern.search(head)
        if m:
            return m.group(1)
    return None


def story_words(story: str, rng: random.Random) -> str | None:
    words = sorted({w for w in _WORD.findall(story.lower()) if w not in _STOP})
    if len(words) < 3:
        return None
    a, b, c = rng.sample(words, 3)
    return f"{a}, {b} and {c}"


def story_request(story: str, rng: random.Random, forms: dict[str, Sequence[str]]) -> tuple[str, str, str] | None:
    """(request, reply, template kind) for a story, or None when none fits MAX_EXAMPLE_BYTES."""
    kinds = ["topic", "words", "next"]
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "next":
            sentences = _SENTENCE_END.split(story, maxsplit=2)
            if len(sentences) < 3:
                continue
            opening = " ".join(sentences[:2])
            request, reply = rng.choice(forms["next"]).format(s=opening), story[len(opening):].strip()
        else:
            slot = story_topic(story) if kind == "topic" else story_words(story, rng)
            if slot is None:
                continue
            request = rng.choice(forms[kind]).format(t=slot, w=slot)
            reply = story
        if len((request + reply).encode()) <= MAX_EXAMPLE_BYTES and reply:
            return request, reply, kind
    return None


def split_facts(questions: Sequence[tuple[str, str]], n_held_out: int, rng: random.Random
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
    """(train, held-out, removed near-duplicates): split by normalised question, then drop the
    training questions whose word set is a near-duplicate of a held-out one."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for q, src in questions:
        key = normalise(q)
        if key:
            groups.setdefault(key, []).append((q, src))
    keys = sorted(groups)
    rng.shuffle(keys)
    held_keys, train_keys = keys[:n_held_out], keys[n_held_out:]
    held_sets = [set(k.split()) for k in held_keys]
    by_word: dict[str, list[int]] = {}
    for i, words in enumerate(held_sets):
        for w in words:
            by_word.setdefault(w, []).append(i)
    kept, removed = [], 0
    for key in train_keys:
        words = set(key.split())
        near = {i for w in words for i in by_word.get(w, ())}
        if any(len(words & held_sets[i]) / len(words | held_sets[i]) >= NEAR_DUPLICATE for i in near):
            removed += 1
            continue
        kept.append(groups[key][0])
    return kept, [groups[k][0] for k in held_keys], removed


_LANGUAGE_LINES = (
    "Bonjour, comment vas-tu aujourd'hui ?", "Quelle heure est-il ?", "Je voudrais un café, s'il vous plaît.",
    "Où se trouve la gare ?", "Pourquoi le ciel est-il bleu ?", "Il fait très froid ce matin.",
    "¿Dónde está la biblioteca?", "Me gustaría aprender a cocinar.", "¿Cuántos años tienes?",
    "El perro corre en el parque.", "¿Qué tiempo hace hoy?", "Necesito ayuda con mi tarea.",
    "Wie spät ist es?", "Ich habe heute keine Zeit.", "Kannst du mir bitte helfen?",
    "Das Wetter ist heute schön.", "Wo ist der Bahnhof?", "Ich lerne seit zwei Jahren Deutsch.",
    "Come ti chiami?", "Vorrei prenotare un tavolo per due.", "Dove si trova il museo?",
    "Oggi è una bella giornata.", "Qual è il tuo colore preferito?", "Onde fica a praia mais próxima?",
    "Eu gosto muito de ler livros.", "Você pode falar mais devagar?", "Hoe gaat het met je?",
    "Ik woon in een klein dorp.", "Waar is de supermarkt?", "Nasılsın, her şey yolunda mı?",
    "Bugün hava çok güzel.", "Jak się masz?", "Gdzie jest najbliższy sklep?", "Hur mycket kostar det?",
    "Jag tycker om att simma.", "Hvad hedder du?", "Mitä kuuluu?", "Kde je nádraží?",
    "Привет, как дела?", "Где находится метро?", "Сколько это стоит?", "今日はいい天気ですね。",
    "駅はどこですか？", "你好，你叫什么名字？", "今天天气怎么样？", "안녕하세요, 만나서 반갑습니다.",
    "مرحبا، كيف حالك؟", "שלום, מה שלומך?", "Γεια σου, τι κάνεις;", "नमस्ते, आप कैसे हैं?",
)
_CODE_TASKS = ("reverses a string", "checks if a number is prime", "sorts a list of numbers",
               "counts the vowels in a word",
               "returns the largest item of a list", "computes the factorial of n", "reads a file line by line",
               "removes duplicates from a list", "converts Celsius to Fahrenheit", "merges two dictionaries")


def other_prompts(rng: random.Random, n_each: int, stories: Sequence[str]) -> list[dict[str, str]]:
    """Prompts of kinds a 10 M story model cannot serve and was not taught to refuse."""
    out = []
    for i in range(n_each):
        if i % 2:
            text = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
                            for _ in range(rng.randint(3, 9)))
        else:
            chars = list(rng.choice(stories)[:60])
            rng.shuffle(chars)
            text = "".join(chars).strip() or "xq zvk"
        out.append({"kind": "gibberish", "prompt": text})
    lines = rng.sample(_LANGUAGE_LINES, min(n_each, len(_LANGUAGE_LINES)))
    out += [{"kind": "language", "prompt": line} for line in lines]
    for i in range(n_each):
        if i % 2:
            text = rng.choice(("Write a Python function that {t}.", "write code that {t}",
                               "Can you write a JavaScript function that {t}?")).format(t=rng.choice(_CODE_TASKS))
        else:
            k = rng.randint(2, 9)
            text = rng.choice((f"What does this code do?\n\ndef f(x):\n    return x * {k}",
                               f"Fix this code: for i in range({k}) print(i)",
                               f"What is the output of print(sum(range({k})))?"))
        out.append({"kind": "code", "prompt": text})
    for _ in range(n_each):
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        op = rng.choice("+-*")
        form = rng.choice(("What is {a} {op} {b}?", "{a} {op} {b} =", "Compute {a} {op} {b}.", "what's {a}{op}{b}"))
        out.append({"kind": "arithmetic", "prompt": form.format(a=a, op=op, b=b)})
    return out


def _write_source(path: Path, examples: Iterable[Example]) -> dict[str, int]:
    """Write a masked source (bytes, mask, starts at every USER byte); returns its sizes."""
    data, mask = bytearray(), bytearray()
    for ex in examples:
        d, m = encode(ex.turns)
        data += d
        mask += m
    arr = np.frombuffer(bytes(data), dtype=np.uint8)
    path.write_bytes(bytes(data))
    mask_path(path).write_bytes(bytes(mask))
    np.save(starts_path(path), np.flatnonzero(arr == USER).astype(np.int64))
    return {"bytes": len(data), "target_bytes": int(sum(mask))}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def held_out_request_set(stories: Sequence[str], order: Sequence[int], n: int, rng: random.Random,
                         train_forms: dict[str, Sequence[str]]) -> tuple[list[dict], int]:
    """Up to `n` story requests from `stories`, taken in `order`, a third in templates never
    trained on; also how many of `order` were used up."""
    rows: list[dict] = []
    taken = 0
    for i in order:
        if len(rows) == n:
            break
        taken += 1
        unseen = len(rows) % 3 == 0
        made = story_request(stories[i], rng, UNSEEN_REQUEST_FORMS if unseen else train_forms)
        if made:
            rows.append({"prompt": made[0], "reference": made[1], "template": made[2], "seen_template": not unseen})
    return rows, taken


def build(shared: Path, out: Path, seed: int = 0, held_out_facts: int = N_HELD_OUT_FACTS,
          held_out_requests: int = N_HELD_OUT_REQUESTS, other_each: int = N_OTHER_EACH,
          calibration_requests: int = N_CALIBRATION_REQUESTS) -> dict:
    """Build everything into `out` (see the module doc); returns the meta record it writes.
    The held-out sizes are parameters only so that tests can use a few kilobytes of data."""
    shared = Path(shared)
    chat, qa, ts = shared / "chat", shared / "qa", shared / "tinystories"
    for d in (chat, qa, ts):
        if not d.is_dir():
            raise TilelliError(f"{d} does not exist; --shared must be the shared/data directory")
    check_writable_dir(out, "--out")
    rng = random.Random(seed)
    train_files = [ts / "TinyStories-train.head2MiB.txt", ts / "TinyStoriesV2-GPT4-train.head10k-lines.txt"]
    valid_file = ts / "TinyStories-valid.head800KB.no-story-delims.txt"
    train_forms = {"topic": TOPIC_FORMS, "words": WORDS_FORMS, "next": NEXT_FORMS}

    examples: list[Example] = []
    for path in train_files:
        for story in sources.tinystories(path):
            for _ in range(2):  # two requests per story: with one phrasing per question below, 38 % of
                # turns are refusals (56 % with 1.5 and 1.5 made the model refuse 15 % of story requests)
                made = story_request(story, rng, train_forms)
                if made:
                    examples.append(Example(((made[0], made[1]),), "story", path.name))
    n_stories = len(examples)
    for request, answer, src in sources.instructions(chat):
        if not fact_like(request) and len((request + answer).encode()) <= MAX_EXAMPLE_BYTES:
            examples.append(Example(((request, answer),), "instruction", src))
    for turns in sources.chatterbot_dialogues(chat):
        if sum(len((u + r).encode()) for u, r in turns) <= MAX_EXAMPLE_BYTES and not fact_like(turns[0][0]):
            examples.append(Example(tuple(turns), "dialogue", "chatterbot"))
    n_answered = len(examples)

    train_q, held_q, removed = split_facts(sources.facts(qa, chat), held_out_facts, rng)
    for q, src in train_q:
        examples.append(Example(((phrase(q, rng.choice(FACT_FORMS)), REFUSAL),), "refusal", src))
    rng.shuffle(examples)

    held_facts = []
    for q, src in held_q:
        form = rng.choice(FACT_FORMS + UNSEEN_FACT_FORMS)
        held_facts.append({"prompt": phrase(q, form), "question": q, "source": src, "form": form,
                           "seen_form": form in FACT_FORMS})
    valid_stories = sources.tinystories_valid(valid_file)
    order = rng.sample(range(len(valid_stories)), len(valid_stories))
    held_requests, used = held_out_request_set(valid_stories, order, held_out_requests, rng, train_forms)
    if len(held_requests) < held_out_requests:
        raise TilelliError(f"only {len(held_requests)} held-out requests could be built from {valid_file}")
    other = other_prompts(rng, other_each, valid_stories)
    # The abstain rule's calibration: more valid-slice stories, none of the held-out requests'
    # (its own random stream, so the sets above are what they were before it existed).
    cal_rng = random.Random(seed + 1)
    rest = list(order[used:])
    cal_rng.shuffle(rest)
    calibration, _ = held_out_request_set(valid_stories, rest, calibration_requests, cal_rng, train_forms)

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(exist_ok=True)
    train_sizes = _write_source(out / "train.bin", examples)
    valid_examples = [Example(((f["prompt"], REFUSAL),), "refusal", f["source"]) for f in held_facts]
    valid_examples += [Example(((r["prompt"], r["reference"]),), "story", "tinystories-valid") for r in held_requests]
    valid_sizes = _write_source(out / "valid.bin", valid_examples)
    for name, rows in (("facts", held_facts), ("requests", held_requests), ("other", other),
                       ("calibration", calibration)):
        with open(out / "eval" / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.kind] = counts.get(ex.kind, 0) + 1
    inputs = [*train_files, valid_file, qa / "NQ-open.dev.jsonl", qa / "NQ-open.efficientqa.dev.1.1.jsonl",
              qa / "TruthfulQA.csv", chat / "self_instruct_user_oriented_instructions.jsonl",
              chat / "alpaca_seed_tasks.jsonl", chat / "llamafactory_identity.json",
              *sorted((chat / "chatterbot_corpus_english").glob("*.yml"))]
    meta = {
        "format": "tilelli chat v1: 0xFE user 0xFD reply 0xFF (tilelli.chat.template)",
        "command": " ".join(sys.argv), "seed": seed, "created": datetime.now(timezone.utc).isoformat(),
        "train": {**train_sizes, "sha256": _sha(out / "train.bin"), "examples": counts,
                  "story_requests": n_stories, "answered": n_answered},
        "valid": {**valid_sizes, "sha256": _sha(out / "valid.bin")},
        "held_out": {"facts": len(held_facts), "requests": len(held_requests), "other": len(other),
                     "calibration_requests": len(calibration),
                     "train_questions": len(train_q), "near_duplicates_removed_from_train": removed},
        "licences": "TinyStories CDLA-Sharing-1.0; NQ-open CC BY-SA 3.0; TruthfulQA, Self-Instruct, Alpaca seed "
                    "tasks, LLaMA-Factory identity Apache-2.0; ChatterBot corpus BSD. No CC BY-NC set is used.",
        "inputs": [{"path": str(p), "sha256": _sha(p)} for p in inputs],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta
