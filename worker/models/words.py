"""Word-level text for the adapters Lantern defines itself (BiLSTM, CNN, Transformer, seq2seq): a tokenizer with
character offsets and a fixed vocabulary.

**Tokenizer** (:func:`tokenize`), one token per word, so every word group of an :class:`Encoding` is a singleton:

- a token is a run of letters and digits (``21st``, ``argento``), a single other non-space character (``,``, ``-``,
  ``(``; so ``...`` is three tokens), or an English clitic split off as GloVe's (Penn Treebank) tokenisation does:
  ``it's`` → ``it`` ``'s``; ``don't`` → ``do`` ``n't``; ``can't`` → ``ca`` ``n't`` (``'s 're 've 'll 'd 'm n't``);
- the token string is the matched text lower-cased, with the typographic apostrophe ``’`` written ``'``;
- offsets are character spans ``(start, end)`` into the original text (matching is done on the original text, so
  offsets stay right where lower-casing changes a string's length).

**Vocabulary** (:class:`Vocabulary`): ``vocab.txt`` in the bundle, one token per line, line number = id. Its first
lines are the special tokens: ``<pad>`` (id 0), ``<unk>`` (any word not in the vocabulary) and, per model, e.g.
``<cls>`` or ``<sos>``/``<eos>``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

PAD, UNK = "<pad>", "<unk>"

TOKEN_PATTERN = re.compile(
    r"[^\W_]+(?=n['’]t\b)"  # the stem before a n't clitic: do|n't, ca|n't, is|n't
    r"|n['’]t\b"  # the n't clitic
    r"|['’](?:s|re|ve|ll|d|m)\b"  # 's 're 've 'll 'd 'm
    r"|[^\W_]+"  # letters and digits
    r"|\S",  # any other single non-space character
    re.IGNORECASE,
)


def normalise(token: str) -> str:
    return token.lower().replace("’", "'")


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) for each token of text (module docstring)."""
    return [(normalise(m.group()), m.start(), m.end()) for m in TOKEN_PATTERN.finditer(text)]


@dataclass(frozen=True)
class Vocabulary:
    """Tokens by id; ``id(token)`` maps an unknown token to ``<unk>``."""

    tokens: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {t: i for i, t in enumerate(self.tokens)})
        if len(self.index) != len(self.tokens):
            raise ValueError("vocabulary tokens must be distinct")
        if self.tokens[:2] != (PAD, UNK):
            raise ValueError(f"a vocabulary starts with {PAD} and {UNK}")

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def id(self, token: str) -> int:
        return self.index.get(token, self.index[UNK])

    @classmethod
    def read(cls, path: str | Path) -> Vocabulary:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        return cls(tuple(lines[:-1] if lines and lines[-1] == "" else lines))

    def write(self, path: str | Path) -> None:
        if any("\n" in t or not t for t in self.tokens):
            raise ValueError("vocabulary tokens must be non-empty single lines")
        Path(path).write_text("".join(t + "\n" for t in self.tokens), encoding="utf-8")
