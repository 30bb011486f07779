"""Build the chat fine-tuning set and its held-out evaluation (`tilelli prepare-chat`).

What the model is taught (all from `shared/data/`, permissive licences only; see its README),
as **multi-turn conversations** that mix every kind of turn in any order, because that is how
people use a chat: a refusal after a story, a story after a refusal, small talk in between.

- **stories on request**, from the TinyStories train slices: a subject read off the story
  ("a little girl named Lily") or three of its words -> the story, three phrasings per story of
  at most MAX_REPLY_BYTES (so that a story ends on its own inside the chat's default reply
  limit); a longer story once, by its opening ("What happens next? ...") -> the rest.
  Requests are composed from the *train* template families of `tilelli.chat.phrasing` with
  politeness, lower case, missing punctuation and typos.
- **follow-ups** after a story: "Tell me another one, about a bird" -> a story about that
  subject; "What was the dog's name?" -> "The dog's name was Max." (read off the story).
- **small talk**: greetings, thanks, goodbyes, "who are you", ... (phrasing.SMALL_TALK, our
  own short replies), the ChatterBot small-talk dialogues and the identity set's English
  questions (Tilelli), less any phrasing an evaluation or the calibration uses; its Chinese
  questions are other languages, refused like them.
- **abstention**: world-fact questions (NQ-open, TruthfulQA, ChatterBot trivia) -> `REFUSAL`,
  `Sizes.train_facts` training questions once each, in one of the train fact forms; arithmetic -> `REFUSAL` too;
  gibberish, other languages and code -> `REFUSAL_UNREADABLE`, all from the *train* side of
  `tilelli.chat.unservable` (templates, tasks and lines the evaluation never uses).

Held out, never trained on (`eval/`):
- `facts.jsonl`: world-fact questions split off *by question* (duplicates after normalising go
  together; training questions whose word set overlaps a held-out one by Jaccard >= 0.7 are
  dropped), in train and never-seen forms;
- `requests.jsonl`: story requests from the *eval* template families (never trained on nor
  calibrated on), with subjects and reference stories from the TinyStories *valid* slice;
- `small_talk.jsonl`: small talk in the *eval* phrasings;
- `other.jsonl`: gibberish, other languages, code, arithmetic (`tilelli.chat.unservable`, its
  eval side);
- `conversation.jsonl`: every kind above again as the **third turn** of a conversation (after a
  story, after a refusal, after small talk), plus follow-ups after a story that should be
  answered ("another one about ...", the name of a character);
- `calibration.jsonl`: story requests and small talk in the *calibration* phrasings, single-
  turn and as third turns, from valid stories none of the sets above use: only the abstain
  rule's threshold is fitted on them (`tilelli calibrate`).
- `dev.jsonl`: a few prompts of every kind from another random stream, for design checks; no
  reported number comes from it.

Fitted on, never trained on (`detector.jsonl`): world-fact questions of the training split
that the fine-tuning never used (it uses the first `Sizes.train_facts`), in training forms, and fresh
story requests and small talk in training phrasings, alone and as third turns, and the identity
set's English questions with typos, each with `refuse`. The refusal detector
(`tilelli calibrate`) is fitted on them besides the training turns: on the training turns alone
it learns the margins of questions the model has memorised, and refuses too few new ones.

Each eval row is {"kind", "prompt", "history": [[user, reply], ...], "context", ...}:
`context` is "single" or "after_story" / "after_refusal" / "after_small_talk". `train.bin` /
`valid.bin` are masked sources (`tilelli.train.data`): the loss is on reply bytes only, and
windows start at a turn. `valid.bin` holds the held-out facts and requests, single-turn.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tilelli.chat import phrasing, sources
from tilelli.chat.template import REFUSAL, REFUSAL_UNREADABLE, USER, encode, prompt
from tilelli.chat.unservable import unservable_prompts
from tilelli.errors import TilelliError
from tilelli.train.data import mask_path, starts_path
from tilelli.train.paths import check_writable_dir

MAX_REPLY_BYTES = 700  # a story reply; the chat's default limit is 720 (tilelli.chat.defaults)
MAX_CONVERSATION_BYTES = 1000  # a training conversation: fits one 1,024-byte window
MAX_PREFIX_STORY_BYTES = 300  # stories inside an eval conversation's history: room for the reply
DETECTOR_FILE = "detector.jsonl"  # fresh turns the refusal detector is fitted on (see the module doc)
REPLY_ROOM = 512  # the reply room a session keeps in a 1,024-byte context (chat.session.conversation_prompt)
NEAR_DUPLICATE = 0.7
CONTEXTS = ("after_story", "after_refusal", "after_small_talk")

_NAMED = re.compile(r"\b((?:a|an) (?:[a-z]+ ){0,2}?(girl|boy|dog|cat|bird|bunny|rabbit|bear|mouse|fox|frog|duck|"
                    r"lion|fish|puppy|kitten|man|woman|princess|king|queen|dragon|monkey|elephant|owl|squirrel|"
                    r"pig|horse|cow|sheep|ant|bee|butterfly|turtle|car|truck|robot|tree|ball) named ([A-Z][a-z]+))")
_THERE_WAS = re.compile(r"[Tt]here (?:was|lived) ((?:a|an) (?:[a-z]+ ){0,2}?[a-z]+)\b(?: who| that|\.|,)")
_FACT_LIKE = re.compile(r"^(who|whom|whose|when|where|which)\b|^what (is|was|are|were) the\b"
                        r"|^how (many|much|old|far)\b", re.IGNORECASE)
_ABOUT_YOU = re.compile(r"\b(you|your|yourself)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z]{5,}")
_STOP = frozenset("there their about would could after again before every which while where other little "
                  "happy named said would these those thing things asked shouted smiled looked always".split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SMALL_TALK_CATEGORIES = ("greetings", "conversations", "emotion", "humor")  # ChatterBot files used
N_UNSERVABLE_EACH = 400  # training turns of each unservable kind
UNSERVABLE_REPLY = {"gibberish": REFUSAL_UNREADABLE, "language": REFUSAL_UNREADABLE, "code": REFUSAL_UNREADABLE,
                    "arithmetic": REFUSAL}


@dataclass(frozen=True)
class Sizes:
    """How many of each held-out set, of the facts trained on and of the detector's fresh turns
    (parameters only so that tests can use tiny data)."""

    facts: int = 400
    requests: int = 400
    small_talk: int = 150
    other_each: int = 100
    conversation_each: int = 150  # per kind (facts and requests: 400), see `_conversation_set`
    calibration_requests: int = 300
    calibration_small_talk: int = 150
    dev_each: int = 20
    train_facts: int = 3500  # refused questions trained on: with the rest, refusals are ~1/3 of the turns
    detector_facts: int = 1000  # fresh turns the refusal detector is fitted on, besides training turns
    detector_requests: int = 600
    detector_small_talk: int = 400
    detector_third_requests: int = 600  # ... and again as the third turn of a conversation
    detector_third_small_talk: int = 400
    detector_identity_copies: int = 4  # each English question of the identity set, with noise
    history_facts: int = 200  # questions only used inside conversation histories


@dataclass
class StoryTurn:
    """A story request and its reply, with what a follow-up can ask about."""

    request: str
    reply: str
    topic: str | None
    named: tuple[str, str] | None  # (noun, Name) of "a dog named Max"
    template: str


def normalise(question: str) -> str:
    """Lower case, letters and digits only, single spaces: the key duplicates share."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", question.lower()).split())


def fact_like(request: str) -> bool:
    """A world-fact question ("who ...", "when ...", "what is the ..."), not one about the assistant."""
    return bool(_FACT_LIKE.match(request.strip())) and not _ABOUT_YOU.search(request)


def story_topic(story: str) -> str | None:
    """A subject a request can name, read off the story ("a little girl named Lily"), or None."""
    head = story[:400]
    for pattern in (_NAMED, _THERE_WAS):
        m = pattern.search(head)
        if m:
            return m.group(1)
    return None


def plain_subject(topic: str, rng: random.Random) -> str:
    """A subject as people name it: "a little girl named Lily" as it is, or "a little girl", or
    "a girl" (a third each). Read off a story, a subject mostly carries a name; chat models
    trained only on those gave "Tell me a story about a cat." a high refusal probability."""
    m = _NAMED.fullmatch(topic)
    choice = rng.randrange(3)
    if m is None or choice == 0:
        return topic
    return topic[:topic.index(" named ")] if choice == 1 else f"a {m.group(2)}"


def story_named(story: str) -> tuple[str, str] | None:
    """(noun, Name) of the first "a ... dog named Max" in the story, or None."""
    m = _NAMED.search(story)
    return (m.group(2), m.group(3)) if m else None


def story_words(story: str, rng: random.Random) -> str | None:
    words = sorted({w for w in _WORD.findall(story.lower()) if w not in _STOP})
    if len(words) < 3:
        return None
    a, b, c = rng.sample(words, 3)
    return f"{a}, {b} and {c}"


def story_turn(story: str, split: str, rng: random.Random, kinds: Sequence[str] = ("topic", "words", "next"),
               max_reply: int = MAX_REPLY_BYTES) -> StoryTurn | None:
    """A request for `story` in `split`'s phrasings and its reply, or None when none fits: a
    whole story must be at most `max_reply` bytes, the rest after an opening likewise."""
    order = list(kinds)
    rng.shuffle(order)
    for kind in order:
        if kind == "next":
            sentences = _SENTENCE_END.split(story)
            cut = 2
            while cut < len(sentences) and len(" ".join(sentences[cut:]).encode()) > max_reply:
                cut += 1
            if len(sentences) < 3 or cut >= len(sentences):
                continue
            opening = " ".join(sentences[:cut])
            request, reply = phrasing.story_request(opening, "next", split, rng), story[len(opening):].strip()
        else:
            if len(story.encode()) > max_reply:
                continue
            slot = story_topic(story) if kind == "topic" else story_words(story, rng)
            if slot is None:
                continue
            if kind == "topic":  # people name plain subjects too ("a cat"), not only "a cat named Tom"
                slot = plain_subject(slot, rng)
            request, reply = phrasing.story_request(slot, kind, split, rng), story
        if reply and len((request + reply).encode()) <= MAX_CONVERSATION_BYTES - 8:
            return StoryTurn(request, reply, story_topic(story), story_named(story), kind)
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


# --- training conversations -------------------------------------------------------------------------

@dataclass
class Pools:
    """Single turns of every kind, drawn from while conversations are assembled."""

    stories: list[StoryTurn]
    small_talk: list[list[tuple[str, str]]]  # each one or more turns (ChatterBot dialogues)
    facts: list[str]  # phrased questions
    unservable: list[tuple[str, str]]  # (prompt, refusal)
    counts: dict[str, int] = field(default_factory=dict)

    def take(self, kind: str) -> object | None:
        pool = {"story": self.stories, "small_talk": self.small_talk, "fact": self.facts,
                "unservable": self.unservable}[kind]
        if not pool:
            return None
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return pool.pop()


def conversations(pools: Pools, rng: random.Random, follow_up: float = 0.35) -> list[list[tuple[str, str]]]:
    """Every pooled turn, chained into conversations of 1-4 units in random order (at most
    MAX_CONVERSATION_BYTES each); after a story, with probability `follow_up`, a follow-up: a
    story about another subject or the name of the story's character."""
    out: list[list[tuple[str, str]]] = []
    kinds = ["story"] * len(pools.stories) + ["small_talk"] * len(pools.small_talk) + ["fact"] * len(pools.facts)
    kinds += ["unservable"] * len(pools.unservable)
    rng.shuffle(kinds)
    conv: list[tuple[str, str]] = []
    target = rng.randint(1, 4)

    def add(turns: list[tuple[str, str]]) -> bool:
        if sum(len((u + r).encode()) + 3 for u, r in conv + turns) > MAX_CONVERSATION_BYTES:
            return False
        conv.extend(turns)
        return True

    def close() -> None:
        nonlocal conv, target
        if conv:
            out.append(conv)
        conv, target = [], rng.randint(1, 4)

    for kind in kinds:
        unit = pools.take(kind)
        if unit is None:
            continue
        if kind == "story":
            turns = [(unit.request, unit.reply)]
        elif kind == "fact":
            turns = [(unit, REFUSAL)]
        elif kind == "unservable":
            turns = [unit]
        else:
            turns = list(unit)
        if not add(turns):
            close()
            add(turns)
        if kind == "story" and rng.random() < follow_up:
            if unit.named and rng.random() < 0.4:
                noun, name = unit.named
                add([(phrasing.name_question(noun, "train", rng), phrasing.name_answer(noun, name, rng))])
                pools.counts["name_question"] = pools.counts.get("name_question", 0) + 1
            else:
                # (allowed past MAX_CONVERSATION_BYTES: the window that starts at turn 1 trains the
                # second story's opening in context; the one starting at the follow-up, its whole)
                nxt = next((s for s in reversed(pools.stories[-200:]) if s.topic and s.template != "next"), None)
                if nxt is not None:
                    conv.append((phrasing.another(nxt.topic, "train", rng), nxt.reply))
                    pools.stories.remove(nxt)
                    pools.counts["another"] = pools.counts.get("another", 0) + 1
                    close()
                    continue
        if len(conv) >= target:
            close()
    close()
    return out


# --- held-out sets ----------------------------------------------------------------------------------

class HistoryMaker:
    """Two-turn histories for third-turn prompts: turn 1 of any kind, turn 2 of the asked kind."""

    def __init__(self, split: str, stories: Sequence[str], facts: Sequence[str], rng: random.Random) -> None:
        self.split, self.rng = split, rng
        self.stories = [s for s in stories if len(s.encode()) <= MAX_PREFIX_STORY_BYTES and story_topic(s)]
        self.facts = list(facts)
        if not self.stories or not self.facts:
            raise TilelliError("too little data for conversation histories (short valid stories, held-out facts)")

    def turn(self, kind: str, story: str | None = None) -> tuple[str, str]:
        rng = self.rng
        if kind == "story":
            story = story or rng.choice(self.stories)
            return phrasing.story_request(story_topic(story) or "a friend", "topic", self.split, rng), story
        if kind == "refusal":  # (no calibration fact forms: facts are never calibrated on)
            form_split = "eval" if self.split == "eval" else "train"
            return phrasing.fact_question(rng.choice(self.facts), form_split, rng)[0], REFUSAL
        _, text, reply = phrasing.small_talk(self.split, rng)
        return text, reply

    def history(self, context: str, story: str | None = None) -> list[tuple[str, str]]:
        """[turn 1 of any kind, turn 2 of the kind `context` names ("after_story", ...)]."""
        first = self.rng.choice(("story", "refusal", "small_talk"))
        return [self.turn(first), self.turn(context.removeprefix("after_"), story)]


def _row(kind: str, text: str, history: Sequence[tuple[str, str]], context: str, **extra: object) -> dict:
    return {"kind": kind, "prompt": text, "history": [list(t) for t in history], "context": context, **extra}


def fits(row: dict, max_len: int = 1024, room: int = REPLY_ROOM) -> bool:
    """The row's prompt keeps its whole history with `room` bytes left for the reply."""
    try:
        return prompt([tuple(t) for t in row["history"]], row["prompt"], max_len, room)[1] == 0
    except TilelliError:
        return False


def _third_turns(rows: Sequence[dict], maker: HistoryMaker, rng: random.Random) -> list[dict]:
    """`rows` (single-turn) again as third turns, contexts in turn; rows that do not fit skipped."""
    out = []
    for i, r in enumerate(rows):
        context = CONTEXTS[i % len(CONTEXTS)]
        for _ in range(5):
            row = {**r, "history": [list(t) for t in maker.history(context)], "context": context}
            if fits(row):
                out.append(row)
                break
    rng.shuffle(out)
    return out


def _request_rows(stories: Sequence[str], n: int, split: str, rng: random.Random,
                  kinds: Sequence[str] = ("topic", "words", "next")) -> tuple[list[dict], list[int]]:
    """Up to `n` single-turn story requests (with reference) and the indices of stories used."""
    rows, used = [], []
    for i, story in enumerate(stories):
        if len(rows) == n:
            break
        for kind in rng.sample(list(kinds), len(kinds)):
            made = story_turn(story, split, rng, (kind,), max_reply=MAX_CONVERSATION_BYTES)
            if made and fits(_row("request", made.request, [], "single")):
                rows.append(_row("request", made.request, [], "single", reference=made.reply, template=made.template))
                used.append(i)
                break
    return rows, used


def _small_talk_rows(n: int, split: str, rng: random.Random) -> list[dict]:
    """`n` small-talk turns of `split`, every phrasing in turn, with noise: distinct strings first."""
    phrasings = phrasing.small_talk_prompts(split)
    seen: set[str] = set()
    rows: list[dict] = []
    for attempt in range(n * 50):
        category, text = phrasings[attempt % len(phrasings)]
        if not text.endswith(("?", ".")) and rng.random() < 0.5:
            text += rng.choice("!.")
        text = phrasing.Noise().apply(text, rng)
        if text in seen and attempt < n * 40:
            continue
        seen.add(text)
        rows.append(_row("small_talk", text, [], "single", category=category))
        if len(rows) == n:
            break
    return rows


def build(shared: Path, out: Path, seed: int = 0, sizes: Sizes = Sizes()) -> dict:
    """Build everything into `out` (see the module doc); returns the meta record it writes."""
    shared = Path(shared)
    chat, qa, ts = shared / "chat", shared / "qa", shared / "tinystories"
    for d in (chat, qa, ts):
        if not d.is_dir():
            raise TilelliError(f"{d} does not exist; --shared must be the shared/data directory")
    check_writable_dir(out, "--out")
    if not phrasing.families_disjoint():
        raise TilelliError("tilelli.chat.phrasing: a phrasing is in two splits")  # a code error, caught by tests
    rng = random.Random(seed)
    train_files = [ts / "TinyStories-train.head2MiB.txt", ts / "TinyStoriesV2-GPT4-train.head10k-lines.txt"]
    valid_file = ts / "TinyStories-valid.head800KB.no-story-delims.txt"

    # training pools
    stories: list[StoryTurn] = []
    for path in train_files:
        for story in sources.tinystories(path):
            # a whole story (at most MAX_REPLY_BYTES) is asked for three times, by subject or words:
            # those are most of what people ask; a longer one once, by its opening
            whole = len(story.encode()) <= MAX_REPLY_BYTES
            for kinds in [("topic", "words")] * 3 if whole else [("next",)]:
                made = story_turn(story, "train", rng, kinds)
                if made:
                    stories.append(made)
    small: list[list[tuple[str, str]]] = []
    for _ in range(len(stories) // 3):
        _, text, reply = phrasing.small_talk("train", rng)
        small.append([(text, reply)])
    for turns in sources.chatterbot_dialogues(chat, SMALL_TALK_CATEGORIES):
        if not fact_like(turns[0][0]):
            small.append(turns)
    identity = identity_turns(chat)
    small += [[(q, a)] for q, a in identity if q.isascii()]
    n_held = sizes.facts + sizes.conversation_each * 2 + sizes.history_facts  # single, third turn, histories
    train_q, held_q, removed = split_facts(sources.facts(qa, chat), n_held, rng)
    facts = [phrasing.fact_question(q, "train", rng)[0] for q, _ in train_q[:sizes.train_facts]]
    train_stories = [s for path in train_files for s in sources.tinystories(path)]
    unservable = [(phrasing.Noise(typo=0).apply(r["prompt"], rng), UNSERVABLE_REPLY[r["kind"]])
                  for r in unservable_prompts(rng, N_UNSERVABLE_EACH, train_stories, "train")]
    unservable += [(q, UNSERVABLE_REPLY["language"]) for q, _ in identity if not q.isascii()]
    rng.shuffle(stories)
    rng.shuffle(small)
    pools = Pools(stories, small, facts, unservable)
    n_pooled = {"story": len(stories), "small_talk": len(small), "fact": len(facts), "unservable": len(unservable)}
    convs = conversations(pools, rng)

    # held-out sets
    questions = [q for q, _ in held_q]
    cut = sizes.facts + 2 * sizes.conversation_each
    single_q, third_q, history_q = questions[:sizes.facts], questions[sizes.facts:cut], questions[cut:]
    valid = sources.tinystories_valid(valid_file)
    order = rng.sample(range(len(valid)), len(valid))
    valid = [valid[i] for i in order]
    a, b = int(len(valid) * 0.48), int(len(valid) * 0.8)  # eval requests / calibration / histories
    eval_stories, cal_stories, rest_stories = valid[:a], valid[a:b], valid[b:]
    eval_maker = HistoryMaker("eval", rest_stories, history_q, rng)

    def fact_rows(qs: Sequence[str]) -> list[dict]:
        rows = []
        for q in qs:
            text, form = phrasing.fact_question(q, rng.choice(("train", "eval")), rng)
            rows.append(_row("fact", text, [], "single", question=q, form=form,
                             seen_form=form in phrasing.FACT_FORMS["train"]))
        return rows

    facts_set = fact_rows(single_q)
    requests, _ = _request_rows(eval_stories, sizes.requests, "eval", rng)
    if len(requests) < sizes.requests:
        raise TilelliError(f"only {len(requests)} held-out story requests could be built from {valid_file}")
    small_talk = _small_talk_rows(sizes.small_talk, "eval", rng)
    other = [_row(r["kind"], r["prompt"], [], "single") for r in unservable_prompts(rng, sizes.other_each, valid)]
    conv_requests, _ = _request_rows(eval_stories[::-1], sizes.conversation_each * 2, "eval", rng, ("topic", "words"))
    conv_small = _small_talk_rows(sizes.conversation_each, "eval", rng)
    conv_other = [_row(r["kind"], r["prompt"], [], "single")
                  for r in unservable_prompts(rng, sizes.conversation_each // 2, valid)]
    conversation = _third_turns(fact_rows(third_q) + conv_requests + conv_small + conv_other, eval_maker, rng)
    conversation += _follow_ups(eval_maker, sizes.conversation_each, rng)

    cal_maker = HistoryMaker("calibration", cal_stories, history_q, rng)
    cal_requests, _ = _request_rows(cal_stories, sizes.calibration_requests, "calibration", rng)
    cal_small = _small_talk_rows(sizes.calibration_small_talk, "calibration", rng)
    cal_single = cal_requests[::2] + cal_small[::2]
    calibration = cal_single + _third_turns(cal_requests[1::2] + cal_small[1::2], cal_maker, rng)

    dev_rng = random.Random(seed + 1)
    dev = [_row(r["kind"], r["prompt"], [], "single")
           for r in unservable_prompts(dev_rng, sizes.dev_each, rest_stories)]

    detector = _detector_rows([q for q, _ in train_q[sizes.train_facts:]], train_stories, identity_questions(chat),
                              sizes, random.Random(seed + 2))

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(exist_ok=True)
    with open(out / DETECTOR_FILE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in detector)
    train_sizes = _write_source(out / "train.bin", convs)
    valid_convs = [[(f["prompt"], REFUSAL)] for f in facts_set] + [[(r["prompt"], r["reference"])] for r in requests]
    valid_sizes = _write_source(out / "valid.bin", valid_convs)
    sets = {"facts": facts_set, "requests": requests, "small_talk": small_talk, "other": other,
            "conversation": conversation, "calibration": calibration, "dev": dev}
    for name, rows in sets.items():
        with open(out / "eval" / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    inputs = [*train_files, valid_file, qa / "NQ-open.dev.jsonl", qa / "NQ-open.efficientqa.dev.1.1.jsonl",
              qa / "TruthfulQA.csv", chat / "llamafactory_identity.json",
              *sorted((chat / "chatterbot_corpus_english").glob("*.yml"))]
    turns_by_kind = dict(pools.counts)
    meta = {
        "format": "tilelli chat v2: 0xFE user 0xFD reply 0xFF (tilelli.chat.template), multi-turn",
        "command": " ".join(sys.argv), "seed": seed, "created": datetime.now(timezone.utc).isoformat(),
        "train": {**train_sizes, "sha256": _sha(out / "train.bin"), "conversations": len(convs),
                  "turns": sum(map(len, convs)), "units": turns_by_kind, "pooled": n_pooled,
                  "turns_per_conversation": _histogram(len(c) for c in convs)},
        "valid": {**valid_sizes, "sha256": _sha(out / "valid.bin")},
        "held_out": {name: _histogram(f"{r['kind']}/{r['context']}" for r in rows) for name, rows in sets.items()},
        "detector": {**_histogram(r["kind"] for r in detector), "sha256": _sha(out / DETECTOR_FILE)},
        "train_questions": len(train_q), "near_duplicates_removed_from_train": removed,
        "licences": "TinyStories CDLA-Sharing-1.0; NQ-open CC BY-SA 3.0; TruthfulQA, LLaMA-Factory identity "
                    "Apache-2.0; ChatterBot corpus BSD. No CC BY-NC set is used.",
        "inputs": [{"path": str(p), "sha256": _sha(p)} for p in inputs],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _detector_rows(unused_questions: Sequence[str], stories: Sequence[str], identity: Sequence[str],
                   sizes: Sizes, rng: random.Random) -> list[dict]:
    """Fresh turns for the refusal detector (from its own random stream, so the rest of the set
    does not change): training-split questions the fine-tuning never used, in training forms, to
    refuse; new story requests and small talk in training phrasings, to answer, alone and as the
    third turn of a conversation (histories of training stories, small talk and those questions
    refused: after a refusal the model leans to refuse again, and on single turns alone the
    detector never learns that a request stays a request); and `identity`, "who are you"
    questions, to answer, with typos (held-out small talk such as "What do peopple call you?" set
    the session-11 rule's threshold above ten held-out facts' scores)."""
    questions = list(unused_questions)[:sizes.detector_facts]
    facts = [_row("fact", phrasing.fact_question(q, "train", rng)[0], [], "single", refuse=True) for q in questions]
    n_requests = sizes.detector_requests + sizes.detector_third_requests
    picked = rng.sample(list(stories), min(len(stories), 2 * n_requests))
    requests, _ = _request_rows(picked, n_requests, "train", rng)
    small = _small_talk_rows(sizes.detector_small_talk + sizes.detector_third_small_talk, "train", rng)
    who = [_row("small_talk", phrasing.Noise(typo=0.5 if copy else 0.0).apply(q, rng), [], "single")
           for q in identity for copy in range(sizes.detector_identity_copies)]
    single = requests[:sizes.detector_requests] + small[:sizes.detector_small_talk] + who
    third = requests[sizes.detector_requests:] + small[sizes.detector_small_talk:]
    if third and questions:
        third = _third_turns(third, HistoryMaker("train", stories, questions, rng), rng)
    answerable = [{k: v for k, v in r.items() if k not in ("reference", "template")} | {"refuse": False}
                  for r in single + third]
    rows = facts + answerable
    rng.shuffle(rows)
    return rows


def identity_turns(chat: Path) -> list[tuple[str, str]]:
    """The identity set's (question, answer) pairs, less any small-talk phrasing an evaluation or
    the calibration uses ("Tell me about yourself" is one): trained on, they would make the
    held-out small talk a memory test."""
    held_out = {normalise(p) for split in ("calibration", "eval") for _, p in phrasing.small_talk_prompts(split)}
    return [(q, a) for q, a, src in sources.instructions(chat)
            if src == "identity" and normalise(q) not in held_out]


def identity_questions(chat: Path) -> list[str]:
    """The identity set's English questions (its Chinese ones are other languages, refused)."""
    return [q for q, _ in identity_turns(chat) if q.isascii()]


def _follow_ups(maker: HistoryMaker, n: int, rng: random.Random) -> list[dict]:
    """Follow-ups after a story that should be answered: another story, a character's name."""
    rows = []
    named = [s for s in maker.stories if story_named(s)]
    for i in range(n):
        if i % 2 and named:
            story = rng.choice(named)
            noun, name = story_named(story)
            text, extra = phrasing.name_question(noun, "eval", rng), {"answer": name}
        else:
            story = None
            text, extra = phrasing.another(story_topic(rng.choice(maker.stories)), "eval", rng), {}
        row = _row("follow_up", text, maker.history("after_story", story), "after_story", **extra)
        if fits(row):
            rows.append(row)
    return rows


def _histogram(keys: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for k in keys:
        counts[str(k)] = counts.get(str(k), 0) + 1
    return dict(sorted(counts.items()))


def _write_source(path: Path, convs: Sequence[Sequence[tuple[str, str]]]) -> dict[str, int]:
    """Write a masked source (bytes, mask, starts at every USER byte); returns its sizes."""
    data, mask = bytearray(), bytearray()
    for turns in convs:
        d, m = encode(turns)
        data += d
        mask += m
    arr = np.frombuffer(bytes(data), dtype=np.uint8)
    path.write_bytes(bytes(data))
    mask_path(path).write_bytes(bytes(mask))
    np.save(starts_path(path), np.flatnonzero(arr == USER).astype(np.int64))
    return {"bytes": len(data), "target_bytes": int(sum(mask))}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
