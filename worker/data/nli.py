"""A generated NLI corpus with known rationales (no NLI corpus can be fetched here).

Every pair records its label, the rule that made it, and the **rationale**: the token positions (under
:func:`worker.models.words.tokenize`) in premise and hypothesis that decide the label.

**Template premises.** A premise is a *frame* (an ordered list of parts, each part one slot with its fixed words)
filled from a small lexicon: subjects (with gender, number, hypernyms), activities in groups of paraphrases (groups
are mutually incompatible), locations (each outside or inside), times, purchases (names, verbs in groups, objects,
shops), adjectives with antonyms. Hypotheses change the premise's slots by rules; the rationale is the changed
slot's tokens on both sides:

- entailment: ``paraphrase`` (another activity / verb of the same group: "is playing" → "is having fun"),
  ``hypernym`` (kid → child, John → a man, garden → outside), ``drop`` (a location, time, clause or shop is left out;
  the rationale is the dropped part of the premise);
- contradiction: ``activity`` (an incompatible activity / verb: "is playing" → "is taking a nap"), ``location``
  (a place inside for one outside, or the reverse), ``gender`` (a name or noun whose gender clashes: Mary → a man), ``number``
  (two → three), ``negation`` ("is not playing"), ``antonym`` (happy → sad);
- neutral: ``add`` (an unsupported phrase: "with her family", "for the first time") and ``modifier`` (an
  unsupported adjective on the subject: "a tall kid").

Any entailment or contradiction may also drop optional parts (still entailed / still contradicting) — which gives
the seeds' pattern "John ordered a book from amazon" → "A man ordered a book".

**Rotten Tomatoes premises** (the sentences of :mod:`worker.data.rt`, 4–16 tokens): ``negation`` (insert or remove
"not" after the first is/are/was/were: contradiction; rationale: the verb and the "not"), ``drop`` (keep the clause
before the first comma or "but"/"and": entailment; rationale: the dropped premise tokens), ``add`` (append an
unsupported claim: neutral; rationale: the added tokens).

**Splits** (one premise gives one hypothesis per label): frames :data:`HELD_OUT_FRAMES` appear only in ``test``
(``template`` = the frame); the other frames' premises go to ``train``/``dev``/``test`` by a hash of the premise
(80/10/10); Rotten Tomatoes premises follow the RT split of :mod:`worker.data.rt`. The seeds' example pairs
(:data:`SEED_PAIRS`) never enter training. Generation is seeded and machine-independent.
"""
from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass, field

from worker.models.words import tokenize

LABELS = ("entailment", "neutral", "contradiction")
SPLITS = ("train", "dev", "test")
SEED = 0

# ------------------------------------------------------------------------------------------------ the lexicon
# subjects: words, gender (m/f/n), plural?, hypernyms (entailed replacements)
SUBJECTS = {
    "a kid": ("n", False, ["a child", "a young person"]),
    "a child": ("n", False, ["a kid", "a young person"]),
    "a boy": ("m", False, ["a kid", "a child", "a male"]),
    "a girl": ("f", False, ["a kid", "a child", "a female"]),
    "a man": ("m", False, ["a person", "an adult", "a male"]),
    "a woman": ("f", False, ["a person", "an adult", "a female"]),
    "a dog": ("n", False, ["an animal", "a pet"]),
    "a cat": ("n", False, ["an animal", "a pet"]),
    "a teacher": ("n", False, ["a person", "an adult"]),
    "a student": ("n", False, ["a person", "a young person"]),
}
MALE_NAMES = ("john", "david", "michael", "james", "robert", "paul", "peter", "mark", "tom", "george", "steve",
              "daniel")
FEMALE_NAMES = ("mary", "sarah", "anna", "emma", "linda", "susan", "lisa", "karen", "alice", "laura", "jane",
                "kate")
GENDER_NOUNS = {"m": ["a man", "a boy", "a male", "a gentleman"], "f": ["a woman", "a girl", "a female", "a lady"]}
PLURALS = {"kids": ["children"], "children": ["kids"], "men": ["people", "adults"], "women": ["people", "adults"],
           "dogs": ["animals"], "students": ["people"], "boys": ["kids"], "girls": ["kids"]}
NUMBERS = ("two", "three", "four", "five", "six", "seven")

# activities (progressive, without the auxiliary): groups of paraphrases; different groups are incompatible
ACTIVITIES = {
    "rest": ["sleeping", "taking a nap", "lying in bed", "resting quietly"],
    "play": ["playing", "having fun", "playing a game"],
    "run": ["running", "jogging", "racing"],
    "eat": ["eating", "having lunch", "eating a sandwich", "having a meal"],
    "read": ["reading a book", "reading", "studying a book"],
    "sing": ["singing", "singing a song", "making music"],
    "swim": ["swimming", "diving into the water"],
    "cook": ["cooking", "making dinner", "preparing food"],
    "dance": ["dancing", "moving to the music"],
    "sit": ["sitting quietly", "sitting still", "sitting on a chair"],
}
LOCATIONS = {
    "in the garden": "outside", "in the park": "outside", "at the beach": "outside", "on the street": "outside",
    "in the yard": "outside", "in the forest": "outside", "in the kitchen": "inside", "in the bedroom": "inside",
    "in the house": "inside", "in the classroom": "inside", "in the library": "inside", "at the office": "inside",
}
PLACE_WORDS = {"outside": "outside", "inside": "indoors"}
TIMES = ("this morning", "right now", "today", "at noon", "this afternoon", "in the evening")
PAST_TIMES = ("last week", "on monday", "two days ago", "last night", "this year")
VERBS = {  # past tense groups; negation form
    "buy": [("ordered", "order"), ("bought", "buy"), ("purchased", "purchase")],
    "sell": [("sold", "sell")],
    "return": [("returned", "return"), ("sent back", "send back")],
    "borrow": [("borrowed", "borrow")],
}
OBJECTS = ("a book", "a lamp", "a laptop", "a phone", "a bike", "a dress", "a camera", "a chair", "a jacket",
           "a watch", "a guitar", "a toy")
SHOPS = ("amazon", "ebay", "a store", "the market", "a shop", "a website")
ADJECTIVES = {"happy": "sad", "sad": "happy", "tall": "short", "short": "tall", "old": "young", "young": "old",
              "tired": "energetic", "energetic": "tired", "calm": "angry", "angry": "calm", "hungry": "full",
              "wet": "dry"}
EXTRA_ADJECTIVES = ("tall", "young", "happy", "small", "little", "famous", "friendly", "tired")
ADDITIONS = ("with her family", "with his family", "with his friends", "with her friends", "for the first time",
             "because it is sunny", "after school", "with a friend", "to win a prize", "for an hour")
PURCHASE_ADDITIONS = ("as a gift", "for a friend", "for his wife", "for her husband", "with a credit card",
                      "for the first time", "to read on vacation")
RT_ADDITIONS = ("and it won an award", "according to my friends", "and it was made in france",
                "and the director is famous", "and it cost a lot of money")

# ------------------------------------------------------------------------------------------------ frames
# a frame: parts (slot, fixed words around the slot value as a format string); "S" = subject, "A" = auxiliary +
# activity, "L" = location, "T" = time, "J" = adjective clause, "V" = verb, "O" = object, "P" = shop
FRAMES = {
    "act": [("S", "{}"), ("A", "{}"), ("L", "{}")],
    "act-short": [("S", "{}"), ("A", "{}")],
    "act-time": [("S", "{}"), ("A", "{}"), ("L", "{}"), ("T", "{}")],
    "time-act": [("T", "{} ,"), ("S", "{}"), ("A", "{}"), ("L", "{}")],
    "place-act": [("L", "{} ,"), ("S", "{}"), ("A", "{}")],
    "who-looks": [("S", "{}"), ("J", "who looks {}"), ("A", "{}"), ("L", "{}")],
    "and-looks": [("S", "{}"), ("A", "{}"), ("L", "{}"), ("J", "and looks {}")],
    "count": [("S", "{}"), ("A", "{}"), ("L", "{}")],  # plural subject with a number
    "name-act": [("S", "{}"), ("A", "{}"), ("L", "{}")],  # a name as the subject
    "purchase": [("S", "{}"), ("V", "{}"), ("O", "{}"), ("P", "from {}")],
    "purchase-time": [("S", "{}"), ("V", "{}"), ("O", "{}"), ("P", "from {}"), ("T", "{}")],
    "purchase-noun": [("S", "{}"), ("V", "{}"), ("O", "{}"), ("P", "from {}")],  # a gendered noun as the subject
}
HELD_OUT_FRAMES = ("time-act", "and-looks", "purchase-time")
OPTIONAL = ("L", "T", "J", "P")  # parts whose removal keeps an entailment entailed (and a contradiction)

# the seeds' examples (Ghaeini et al. 2018 §3.1, §3.1.2): never trained on
SEED_PAIRS = (
    ("A kid is playing in the garden", "A kid is taking a nap in the garden", "contradiction"),
    ("A kid is playing in the garden", "A kid is having fun in the garden with her family", "neutral"),
    ("A kid is playing in the garden", "A kid is having fun in the garden", "entailment"),
    ("John ordered a book from amazon", "A man ordered a book", "entailment"),
    ("Mary ordered a book from amazon", "A man ordered a book", "contradiction"),
)


@dataclass
class Pair:
    premise: str
    hypothesis: str
    label: str
    rule: str  # e.g. "contradiction:gender"
    template: str  # the frame, or "rt"
    rationale: dict[str, list[int]] = field(default_factory=dict)  # "premise"/"hypothesis" -> token positions

    def as_dict(self) -> dict:
        return {"premise": self.premise, "hypothesis": self.hypothesis, "label": self.label, "rule": self.rule,
                "template": self.template, "rationale": self.rationale}


Slots = dict[str, str]


def render(frame: str, slots: Slots) -> tuple[str, list[str]]:
    """The sentence and, per token, the slot it belongs to (parts whose slot is absent are left out)."""
    words, tags = [], []
    for slot, pattern in FRAMES[frame]:
        if slot in slots:
            part = pattern.format(slots[slot]).split()
            words += part
            tags += [slot] * len(part)
    for slot in ("X",):  # an added phrase goes at the end
        if slot in slots:
            part = slots[slot].split()
            words += part
            tags += [slot] * len(part)
    text = " ".join(words)
    text = text[0].upper() + text[1:]
    assert [t for t, _, _ in tokenize(text)] == [w.lower() for w in words], text
    return text, tags


def _positions(tags: list[str], slots: set[str]) -> list[int]:
    return [i for i, tag in enumerate(tags) if tag in slots]


def _progressive(subject_plural: bool, phrase: str, negate: bool = False) -> str:
    return ("are" if subject_plural else "is") + (" not " if negate else " ") + phrase


# ------------------------------------------------------------------------------------------------ premises
def _premise(frame: str, rng: random.Random) -> tuple[Slots, dict]:
    """Slot values of a random premise of `frame`, and what the rules need to know about them."""
    info: dict = {}
    slots: Slots = {}
    if frame.startswith("purchase"):
        if frame == "purchase-noun":
            gender = rng.choice("mf")
            slots["S"] = rng.choice(GENDER_NOUNS[gender][:2])
        else:
            gender = rng.choice("mf")
            slots["S"] = rng.choice(MALE_NAMES if gender == "m" else FEMALE_NAMES)
        info.update(gender=gender, name=frame != "purchase-noun", plural=False)
        group = rng.choice(list(VERBS))
        verb = rng.choice(VERBS[group])
        info.update(group=group, verb=verb)
        slots.update(V=verb[0], O=rng.choice(OBJECTS), P=rng.choice(SHOPS))
        if frame == "purchase-time":
            slots["T"] = rng.choice(PAST_TIMES)
        return slots, info
    if frame == "count":
        noun = rng.choice(list(PLURALS))
        number = rng.choice(NUMBERS)
        slots["S"] = f"{number} {noun}"
        info.update(plural=True, number=number, noun=noun, gender="n")
    elif frame == "name-act":
        gender = rng.choice("mf")
        slots["S"] = rng.choice(MALE_NAMES if gender == "m" else FEMALE_NAMES)
        info.update(plural=False, gender=gender, name=True)
    else:
        subject = rng.choice(list(SUBJECTS))
        slots["S"] = subject
        info.update(plural=False, gender=SUBJECTS[subject][0], subject=subject)
    group = rng.choice(list(ACTIVITIES))
    phrase = rng.choice(ACTIVITIES[group])
    info.update(group=group, phrase=phrase)
    slots["A"] = _progressive(info["plural"], phrase)
    if any(s == "L" for s, _ in FRAMES[frame]):
        slots["L"] = rng.choice(list(LOCATIONS))
    if any(s == "T" for s, _ in FRAMES[frame]):
        slots["T"] = rng.choice(TIMES)
    if any(s == "J" for s, _ in FRAMES[frame]):
        info["adjective"] = rng.choice(list(ADJECTIVES))
        slots["J"] = info["adjective"]
    return slots, info


# ------------------------------------------------------------------------------------------------ rules
def _rules(frame: str, slots: Slots, info: dict) -> dict[str, list[tuple[str, Slots, set[str]]]]:
    """label -> candidate (rule, hypothesis slots, deciding slots) for this premise."""
    out: dict[str, list] = {label: [] for label in LABELS}
    purchase = frame.startswith("purchase")
    entail, contra, neutral = out["entailment"], out["contradiction"], out["neutral"]
    # activity / verb
    if purchase:
        group, verb = info["group"], info["verb"]
        for other_verb in VERBS[group]:
            if other_verb != verb:
                entail.append(("paraphrase", {**slots, "V": other_verb[0]}, {"V"}))
        for g, verbs in VERBS.items():
            if g != group:
                contra.append(("activity", {**slots, "V": verbs[0][0]}, {"V"}))
        contra.append(("negation", {**slots, "V": f"did not {verb[1]}"}, {"V"}))
    else:
        group, plural = info["group"], info["plural"]
        for other in ACTIVITIES[group]:
            if other != info["phrase"]:
                entail.append(("paraphrase", {**slots, "A": _progressive(plural, other)}, {"A"}))
        for g, phrases in ACTIVITIES.items():
            if g != group:
                contra.append(("activity", {**slots, "A": _progressive(plural, phrases[0])}, {"A"}))
        contra.append(("negation", {**slots, "A": _progressive(plural, info["phrase"], negate=True)}, {"A"}))
    # subject
    subject = slots["S"]
    if info.get("name") or subject in GENDER_NOUNS["m"] + GENDER_NOUNS["f"]:
        gender = info["gender"]
        same = GENDER_NOUNS[gender] if info.get("name") else SUBJECTS.get(subject, ("", False, []))[2]
        for noun in same:
            entail.append(("hypernym", {**slots, "S": noun}, {"S"}))
        clash = GENDER_NOUNS["f" if gender == "m" else "m"]
        if info.get("name"):
            clash = clash + list(FEMALE_NAMES if gender == "m" else MALE_NAMES)[:3]
        for noun in clash:
            contra.append(("gender", {**slots, "S": noun}, {"S"}))
    elif info.get("number"):
        noun, number = info["noun"], info["number"]
        for other in NUMBERS:
            if other != number:
                contra.append(("number", {**slots, "S": f"{other} {noun}"}, {"S"}))
        for hyper in PLURALS[noun]:
            entail.append(("hypernym", {**slots, "S": f"{number} {hyper}"}, {"S"}))
        entail.append(("hypernym", {**slots, "S": f"some {noun}"}, {"S"}))
    elif "subject" in info:
        for hyper in SUBJECTS[subject][2]:
            entail.append(("hypernym", {**slots, "S": hyper}, {"S"}))
        if subject in ("a dog", "a cat"):
            contra.append(("activity", {**slots, "S": "a cat" if subject == "a dog" else "a dog"}, {"S"}))
    # location
    if "L" in slots:
        place = LOCATIONS[slots["L"]]
        entail.append(("hypernym", {**slots, "L": PLACE_WORDS[place]}, {"L"}))
        contra.append(("location", {**slots, "L": PLACE_WORDS["inside" if place == "outside" else "outside"]},
                       {"L"}))
        for other, kind in LOCATIONS.items():
            if kind != place:
                contra.append(("location", {**slots, "L": other}, {"L"}))
    # adjective
    if "J" in slots:
        contra.append(("antonym", {**slots, "J": ADJECTIVES[info["adjective"]]}, {"J"}))
    # drop optional parts
    for part in OPTIONAL:
        if part in slots:
            entail.append(("drop", {k: v for k, v in slots.items() if k != part}, {"drop:" + part}))
    # neutral
    for phrase in PURCHASE_ADDITIONS if purchase else ADDITIONS:
        neutral.append(("add", {**slots, "X": phrase}, {"X"}))
    if not purchase and "subject" in info and subject.startswith("a "):
        for adjective in EXTRA_ADJECTIVES:
            neutral.append(("modifier", {**slots, "S": f"a {adjective} {subject[2:]}"}, {"S"}))
    return out


def _template_pair(frame: str, rng: random.Random) -> list[Pair]:
    slots, info = _premise(frame, rng)
    premise, p_tags = render(frame, slots)
    pairs = []
    for label, candidates in _rules(frame, slots, info).items():
        rule, h_slots, deciding = rng.choice(candidates)
        if label != "neutral" and rule != "drop" and rng.random() < 0.3:  # also leave out an optional part
            droppable = [p for p in OPTIONAL if p in h_slots and p not in deciding]
            if droppable:
                h_slots = {k: v for k, v in h_slots.items() if k != rng.choice(droppable)}
        hypothesis, h_tags = render(frame, h_slots)
        dropped = {d.split(":")[1] for d in deciding if d.startswith("drop:")}
        rationale = {"premise": _positions(p_tags, (deciding - {"X"}) | dropped),
                     "hypothesis": _positions(h_tags, deciding)}
        pairs.append(Pair(premise, hypothesis, label, f"{label}:{rule}", frame, rationale))
    return pairs


# ------------------------------------------------------------------------------------------------ RT premises
BE = ("is", "are", "was", "were")
CUTS = (",", "but", "and", ";")


def _rt_pairs(text: str, rng: random.Random) -> list[Pair]:
    """Up to three pairs on one Rotten Tomatoes sentence (module docstring); [] if it does not fit."""
    tokens = [t for t, _, _ in tokenize(text)]
    if not 4 <= len(tokens) <= 16:
        return []
    premise = " ".join(tokens)
    pairs = []
    verb = next((i for i, t in enumerate(tokens) if t in BE), None)
    if verb is not None:
        if verb + 1 < len(tokens) and tokens[verb + 1] == "not":
            hyp = tokens[: verb + 1] + tokens[verb + 2:]
            rationale = {"premise": [verb, verb + 1], "hypothesis": [verb]}
        else:
            hyp = tokens[: verb + 1] + ["not"] + tokens[verb + 1:]
            rationale = {"premise": [verb], "hypothesis": [verb, verb + 1]}
        pairs.append(Pair(premise, " ".join(hyp), "contradiction", "contradiction:negation", "rt", rationale))
    cut = next((i for i, t in enumerate(tokens) if t in CUTS and 3 <= i <= len(tokens) - 2), None)
    if cut is not None:
        pairs.append(Pair(premise, " ".join(tokens[:cut]), "entailment", "entailment:drop", "rt",
                          {"premise": list(range(cut, len(tokens))), "hypothesis": []}))
    addition = rng.choice(RT_ADDITIONS).split()
    base = tokens[:cut] if cut is not None else [t for t in tokens if t not in (".", "!", "?")]
    pairs.append(Pair(premise, " ".join(base + addition), "neutral", "neutral:add", "rt",
                      {"premise": [], "hypothesis": list(range(len(base), len(base) + len(addition)))}))
    return pairs


# ------------------------------------------------------------------------------------------------ the corpus
def _bucket(text: str) -> str:
    value = int(hashlib.sha256(f"{SEED}:{text}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if value < 0.8 else "dev" if value < 0.9 else "test"


@functools.lru_cache(maxsize=4)
def corpus(per_frame: int = 700, rt_limit: int = 2500) -> dict[str, tuple[Pair, ...]]:
    """{"train", "dev", "test"} -> pairs. `per_frame` premises per template frame (3 pairs each), and at most
    `rt_limit` Rotten Tomatoes sentences (over all splits)."""
    from worker.data.rt import rt_split

    rng = random.Random(SEED)
    seeds = {(p.lower(), h.lower()) for p, h, _ in SEED_PAIRS}
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    seen: set[tuple[str, str]] = set()

    def add(split: str, pair: Pair) -> None:
        key = (pair.premise.lower(), pair.hypothesis.lower())
        if key in seen or (split == "train" and key in seeds):
            return
        seen.add(key)
        out[split].append(pair)

    for frame in FRAMES:
        for _ in range(per_frame):
            pairs = _template_pair(frame, rng)
            split = "test" if frame in HELD_OUT_FRAMES else _bucket(pairs[0].premise.lower())
            for pair in pairs:
                add(split, pair)
    for split in SPLITS:
        rows = rt_split(split)
        share = rt_limit * (8 if split == "train" else 1) // 10
        for text, _ in rows[:share]:
            for pair in _rt_pairs(text, rng):
                add(split, pair)
    return {s: tuple(v) for s, v in out.items()}


def vocabulary_words() -> set[str]:
    """Every token the generator can produce, the corpus's RT premises and the seeds' examples."""
    words: set[str] = set()
    for pairs in corpus().values():
        for pair in pairs:
            for text in (pair.premise, pair.hypothesis):
                words.update(t for t, _, _ in tokenize(text))
    for premise, hypothesis, _ in SEED_PAIRS:
        words.update(t for text in (premise, hypothesis) for t, _, _ in tokenize(text))
    lexicon = [*SUBJECTS, *MALE_NAMES, *FEMALE_NAMES, *sum(GENDER_NOUNS.values(), []), *PLURALS, *NUMBERS,
               *sum(ACTIVITIES.values(), []), *LOCATIONS, *PLACE_WORDS.values(), *TIMES, *PAST_TIMES, *OBJECTS,
               *SHOPS, *ADJECTIVES, *EXTRA_ADJECTIVES, *ADDITIONS, *PURCHASE_ADDITIONS, *RT_ADDITIONS,
               *(w for group in VERBS.values() for pair in group for w in pair), "not", "did", "is", "are",
               "some", "who", "looks", "and", "from"]
    words.update(t for phrase in lexicon for t, _, _ in tokenize(phrase))
    return words
