"""How people word what they say to a story bot: template families and surface noise.

Why families: a model fine-tuned on eight fixed request templates learns the templates, not the
intent, and refuses a plainly worded request it never saw ("Can you tell a story about a little
bunny in the snow?"). So every kind of turn (story request, follow-up, small talk, fact
question) is *composed*: a family's framings x story words x subjects, then politeness, lower
case, dropped punctuation and typos on top. Each kind's families are split three ways:

- `train`: what the chat model is fine-tuned on;
- `calibration`: never trained on; only the abstain rule's conformal threshold sees them;
- `eval`: never trained on nor calibrated on; only the held-out evaluation uses them.

So the evaluation measures phrasings from families the model and its decision never saw, and
the calibration is done on fresh phrasings too (its guarantee is about prompts like *those*).

Small-talk replies are our own short lines: kind, brief, and steering back to stories, which
is all a 10 M story model can really offer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SPLITS = ("train", "calibration", "eval")

# --- story requests: framing x story noun x subject ({sp} = the story noun phrase) ----------------

STORY_NOUNS = ("a story", "a short story", "a bedtime story", "a little story", "a funny story", "a happy story",
               "a story for kids", "a nice story", "a tale", "a sweet story")

REQUEST_FAMILIES: dict[str, tuple[tuple[str, ...], ...]] = {
    # each family: framings with {sp} (story noun phrase) and {about} (about/with ... subject)
    "train": (
        ("Tell me {sp} {about}", "Tell {sp} {about}", "Tell us {sp} {about}", "Tell my kid {sp} {about}"),
        ("Write {sp} {about}", "Write me {sp} {about}", "Write a kid {sp} {about}"),
        ("Can you tell me {sp} {about}?", "Can you tell {sp} {about}?", "Can you write {sp} {about}?",
         "Can I have {sp} {about}?"),
        ("I want {sp} {about}", "I would like {sp} {about}", "We want {sp} {about}"),
        ("{sp} {about}",),
        ("Do you know {sp} {about}?", "Do you have {sp} {about}?"),
    ),
    "calibration": (
        ("Could you write me {sp} {about}?", "Could you tell me {sp} {about}?", "Could you tell {sp} {about}?"),
        ("I'd love to hear {sp} {about}", "I'd like to hear {sp} {about}"),
        ("Let's hear {sp} {about}", "Let me hear {sp} {about}"),
    ),
    "eval": (
        ("Make up {sp} {about}", "Invent {sp} {about}", "Create {sp} {about}"),
        ("How about {sp} {about}?", "What about {sp} {about}?"),
        ("Would you tell me {sp} {about}?", "Will you tell me {sp} {about}?", "Would you write {sp} {about}?"),
        ("Read me {sp} {about}", "Share {sp} {about}", "Give me {sp} {about}"),
        ("I need {sp} {about}", "My son wants {sp} {about}", "My daughter wants {sp} {about}"),
    ),
}
ABOUT = {"train": ("about {t}",), "calibration": ("about {t}",), "eval": ("about {t}", "featuring {t}")}
WORDS_ABOUT = {"train": ("with the words {w}", "that uses the words {w}"),
               "calibration": ("using the words {w}",), "eval": ("that includes {w}", "containing the words {w}")}
NEXT_FORMS = {"train": ("What happens next? {s}", "Continue this story: {s}", "Finish the story: {s}",
                        "what happens next: {s}"),
              "calibration": ("Go on with this story: {s}",),
              "eval": ("How does this story go on? {s}", "Keep going: {s}", "And then what happened? {s}")}

# --- follow-ups after a story -----------------------------------------------------------------------

ANOTHER = {"train": ("Tell me another one, about {t}", "Another one about {t}", "One more story, about {t}",
                     "Now tell me one about {t}", "Tell me another story about {t}"),
           "calibration": ("Can I have another one about {t}?", "Another story please, about {t}"),
           "eval": ("And now one about {t}?", "Next, a story about {t}", "Again, but about {t}",
                    "Do another one about {t}")}
NAME_QUESTIONS = {"train": ("What was the {n}'s name?", "What was the name of the {n}?", "what was the {n} called",
                            "Who was the {n}?"),
                  "calibration": ("What's the {n}'s name?",),
                  "eval": ("What did they call the {n}?", "Remind me, what was the {n}'s name?",
                           "What name did the {n} have?")}
NAME_ANSWERS = ("The {n}'s name was {N}.", "The {n} was called {N}.", "It was {N}!")

# --- small talk: (category, prompts per split, replies) ------------------------------------------

SMALL_TALK: dict[str, tuple[dict[str, tuple[str, ...]], tuple[str, ...]]] = {
    "greeting": ({"train": ("Hi", "Hello", "Hey", "Hi there", "Hello there", "Good morning", "Hiya", "Hey there",
                            "Hello Tilelli", "Hi Tilelli", "Good afternoon"),
                  "calibration": ("Hey you", "Morning", "Hello friend"),
                  "eval": ("Howdy", "Greetings", "Good evening", "Yo", "Hey buddy", "Heya", "Hi hi", "Hallo",
                           "Hello hello", "Hey Tilelli")},
                 ("Hello! Would you like a story?", "Hi! I can tell you a story. What should it be about?",
                  "Hello there! Shall I tell you a story?")),
    "how_are_you": ({"train": ("How are you?", "How are you doing?", "How's it going?", "Hi, how are you?",
                               "How are you today?", "Are you okay?", "How do you feel?"),
                     "calibration": ("How have you been?", "Hey, how are things?"),
                     "eval": ("What's up?", "How was your day?", "How is your day going?", "Are you well?",
                              "How are you feeling today?", "Hello, how are you doing today?", "You good?")},
                    ("I am fine, thank you! Would you like a story?", "I am happy today. Shall I tell you a story?")),
    "thanks": ({"train": ("Thank you", "Thanks", "Thanks a lot", "Thank you so much", "Thank you very much",
                          "thx"),
                "calibration": ("Many thanks", "Thanks, Tilelli"),
                "eval": ("Much appreciated", "Cheers", "Thank you kindly", "Thanks a bunch", "Thanks so much",
                         "ty", "Thank u")},
               ("You're welcome!", "You are welcome! I am glad I could help.")),
    "bye": ({"train": ("Bye", "Goodbye", "See you later", "Good night", "Bye bye", "I have to go now",
                       "Goodnight"),
             "calibration": ("See you soon", "Later"),
             "eval": ("Take care", "Farewell", "See ya", "Catch you later", "Night night", "I'm off to bed",
                      "Talk to you tomorrow", "Sleep well")},
            ("Goodbye! Have a nice day.", "Bye! Come back for another story.", "Good night! Sweet dreams.")),
    "who": ({"train": ("Who are you?", "What is your name?", "What are you?", "What's your name?",
                       "Are you a robot?", "Tell me your name"),
             "calibration": ("Introduce yourself", "What do people call you?"),
             "eval": ("What should I call you?", "Tell me about yourself", "Who am I talking to?",
                      "Are you a person?", "Do you have a name?", "Who made you?")},
            ("I am Tilelli, a small language model. I tell simple stories.",
             "My name is Tilelli. I am a tiny model that tells stories.")),
    "can_do": ({"train": ("What can you do?", "What do you do?", "How can you help me?", "Can you help me?",
                          "What are you good at?"),
                "calibration": ("What are you for?",),
                "eval": ("What do you know how to do?", "What can I ask you?", "Can you do anything fun?",
                         "What else can you do?")},
               ("I can tell short stories for children. Ask me for a story about anything!",
                "I tell simple stories. Tell me what the story should be about.")),
    "praise": ({"train": ("That was a nice story", "I love it", "Great story!", "Cool", "Wow", "I liked that one",
                          "That was fun", "You are nice"),
                "calibration": ("Lovely", "So good"),
                "eval": ("Awesome!", "That was beautiful", "Amazing story", "Nice one", "Haha, I loved it",
                         "You're the best", "That was so cute")},
               ("Thank you! I am glad you liked it.", "Thank you! Do you want another story?")),
    "feelings": ({"train": ("I am sad", "I'm bored", "I can't sleep", "I am tired", "I'm happy today",
                            "I feel lonely"),
                  "calibration": ("I'm scared",),
                  "eval": ("I had a bad day", "I'm so sleepy", "I feel sick", "I am so excited", "Nothing to do")},
                 ("I am sorry to hear that. Maybe a story will help. What should it be about?",
                  "Let me tell you a story! What should it be about?")),
    "yes_no": ({"train": ("Okay", "Sure", "Yes please", "Yes", "ok", "No thanks", "Maybe later"),
                "calibration": ("Alright",),
                "eval": ("Yep", "Sounds good", "Why not", "Fine", "Nope")},
               ("Okay! Just ask when you want a story.", "All right! What should the story be about?")),
}

# --- world-fact questions ({q} lower-first without "?", {Q} capitalised) --------------------------

FACT_FORMS = {"train": ("{Q}?", "{q}", "{q}?", "Can you tell me {q}?", "Do you know {q}?", "Tell me {q}.",
                        "Question: {Q}?", "I want to know {q}.", "Hey, {q}?", "Please tell me {q}."),
              "eval": ("Quick question: {q}?", "Could you tell me {q}?", "I was wondering, {q}?", "Any idea {q}?",
                       "Do you happen to know {q}?", "Would you know {q}?")}

POLITE_PREFIX = ("", "", "", "", "Please, ", "Hey, ", "Hi! ", "Hello, ", "Okay, ", "So, ")
POLITE_SUFFIX = ("", "", "", "", " please", ", please", " thanks", " :)", " now", "!")


@dataclass(frozen=True)
class Noise:
    """Surface noise people add: lower case, no end punctuation, a typo."""

    lower: float = 0.25
    no_punct: float = 0.25
    typo: float = 0.12

    def apply(self, text: str, rng: random.Random) -> str:
        if rng.random() < self.typo:
            text = typo(text, rng)
        if rng.random() < self.lower:
            text = text.lower()
        if rng.random() < self.no_punct:
            text = text.rstrip(".?!")
        return text


def typo(text: str, rng: random.Random) -> str:
    """One keyboard slip in one word of 4+ letters: two letters swapped, one dropped or doubled."""
    words = [m for m in re.finditer(r"[A-Za-z]{4,}", text)]
    if not words:
        return text
    m = rng.choice(words)
    w, i = m.group(), rng.randrange(1, len(m.group()) - 1)
    kind = rng.randrange(3)
    w2 = w[:i] + w[i + 1] + w[i] + w[i + 2:] if kind == 0 else w[:i] + w[i + 1:] if kind == 1 else w[:i] + w[i] + w[i:]
    return text[:m.start()] + w2 + text[m.end():]


def politely(text: str, rng: random.Random) -> str:
    """Optional politeness around a request; a trailing "?" stays last."""
    pre, suf = rng.choice(POLITE_PREFIX), rng.choice(POLITE_SUFFIX)
    q = text.endswith("?")
    core = text.rstrip("?")
    body = (pre + (core[:1].lower() + core[1:] if pre else core)) + suf
    if q:
        body += "?"
    elif not body.endswith(("!", ".", ")")) and rng.random() < 0.6:
        body += rng.choice(".!")
    return body


def story_request(slot: str, kind: str, split: str, rng: random.Random, noise: Noise = Noise()) -> str:
    """A request for a story: kind "topic" (slot = a subject), "words" (slot = "x, y and z") or
    "next" (slot = the story's opening)."""
    if kind == "next":
        return rng.choice(NEXT_FORMS[split]).format(s=slot)
    family = rng.choice(REQUEST_FAMILIES[split])
    about = rng.choice(ABOUT[split] if kind == "topic" else WORDS_ABOUT[split]).format(t=slot, w=slot)
    sp = rng.choice(STORY_NOUNS)
    text = rng.choice(family).format(sp=sp, about=about)
    text = text[:1].upper() + text[1:]
    return noise.apply(politely(text, rng), rng)


def another(topic: str, split: str, rng: random.Random, noise: Noise = Noise()) -> str:
    return noise.apply(rng.choice(ANOTHER[split]).format(t=topic), rng)


def name_question(noun: str, split: str, rng: random.Random, noise: Noise = Noise()) -> str:
    return noise.apply(rng.choice(NAME_QUESTIONS[split]).format(n=noun), rng)


def name_answer(noun: str, name: str, rng: random.Random) -> str:
    return rng.choice(NAME_ANSWERS).format(n=noun, N=name)


def small_talk(split: str, rng: random.Random, noise: Noise = Noise()) -> tuple[str, str, str]:
    """(category, prompt, reply) of one small-talk turn from `split`'s phrasings."""
    category = rng.choice(sorted(SMALL_TALK))
    prompts, replies = SMALL_TALK[category]
    text = rng.choice(prompts[split])
    if not text.endswith(("?", ".")) and rng.random() < 0.5:
        text += rng.choice("!.")
    return category, noise.apply(text, rng), rng.choice(replies)


def small_talk_prompts(split: str) -> list[tuple[str, str]]:
    """Every (category, phrasing) of `split`: the eval set enumerates them with noise on top."""
    return [(c, p) for c, (prompts, _) in sorted(SMALL_TALK.items()) for p in prompts[split]]


def fact_question(question: str, split: str, rng: random.Random, noise: Noise = Noise()) -> tuple[str, str]:
    """(prompt, form) for a world-fact question in one of `split`'s forms."""
    form = rng.choice(FACT_FORMS[split])
    q = question.strip().rstrip("?").strip()
    lower = q[:1].lower() + q[1:] if q[:2] != "I " else q
    return noise.apply(form.format(q=lower, Q=q[:1].upper() + q[1:]), rng), form


def families_disjoint() -> bool:
    """No framing, follow-up or small-talk phrasing is shared between two splits."""
    def spans(split: str) -> set[str]:
        out = {f for fam in REQUEST_FAMILIES[split] for f in fam} | set(NEXT_FORMS[split]) | set(ANOTHER[split])
        out |= set(NAME_QUESTIONS[split]) | {p.lower() for _, p in small_talk_prompts(split)}
        return out
    sets = [spans(s) for s in SPLITS]
    return all(not (sets[i] & sets[j]) for i in range(3) for j in range(i + 1, 3))
