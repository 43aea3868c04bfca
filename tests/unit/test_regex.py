"""User patterns (`activations.pattern_regex`) run on RE2: a pattern that backtracks for minutes in Python's `re`
completes with the right answer, what RE2 cannot run is refused before any work, and the 200-character cap holds."""
from __future__ import annotations

import re

import pytest

from worker.methods.activations import ActivationsParams, compile_pattern, token_pattern
from worker.models.base import InputError

CATASTROPHIC = "(a+)+$"  # ≈ 2^N steps in a backtracking engine on "a"*N + "!"
ATTACK = "a" * 30 + "! good film"  # measured on main: ≈ 290 s of a worker's time, re-delivered three times


@pytest.fixture(scope="module")
def adapter():
    """The shipped minilm-rt bundle, tokenizer only: token_pattern needs no weights."""
    from worker.models import load_model

    return load_model("minilm-rt", device="cpu")


def spans(pattern: str, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in compile_pattern(pattern).finditer(text)]


@pytest.mark.parametrize("pattern,text", [
    (CATASTROPHIC, "a" * 12 + "! good film"),
    (CATASTROPHIC, "aaaa"),
    ("(a+)+!", "a" * 12 + "! good film"),
    ('"[^"]*"', 'he said "hi there" and "bye"'),
    (r"\bgood\b", "good, goods and good."),
    ("é+", "xxéé yé"),  # spans in characters, not UTF-8 bytes
])
def test_re2_finds_what_re_finds(pattern, text):
    """On texts short enough for `re`, both engines agree (the pattern semantics did not change)."""
    assert spans(pattern, text) == [m.span() for m in re.finditer(pattern, text)]


def test_the_catastrophic_pattern_completes_with_the_right_answer(adapter):
    assert spans(CATASTROPHIC, ATTACK) == []  # the text ends in "film": "(a+)+$" matches nowhere
    assert spans("(a+)+!", ATTACK) == [(0, 31)]

    encoding = adapter.encode({"text": ATTACK})
    none = token_pattern(encoding, {"pattern": None, "pattern_regex": CATASTROPHIC})
    assert none.sum() == 0
    run = token_pattern(encoding, {"pattern": None, "pattern_regex": "(a+)+!"})
    marked = {encoding.tokens[0][t] for t in range(len(run)) if run[t] == 1}
    assert marked and all(set(tok.lstrip("#")) <= {"a", "!"} for tok in marked), marked
    assert "good" not in marked and "film" not in marked


@pytest.mark.parametrize("pattern,why", [
    ("([", "missing ]"),
    (r"(a)\1", "invalid escape"),
    ("good(?= film)", "perl operator"),
    ("(?<=good )film", "perl operator"),
    ("a{1001}", "repetition"),
])
def test_what_re2_cannot_run_is_refused(pattern, why):
    with pytest.raises(InputError, match="RE2") as err:
        compile_pattern(pattern)
    assert why in str(err.value)


def test_unsupported_pattern_stops_the_engine_before_any_work(adapter):
    """The worker's own check (the one the API also runs) refuses it before the model is touched."""
    from worker.methods import check_methods, registry

    with pytest.raises(InputError, match="pattern_regex"):
        check_methods(adapter, registry(), ["activations"], "logit",
                      {"activations": {"rank_by": "correlation", "pattern_regex": r"(a)\1"}})
    with pytest.raises(InputError, match="per-token layer"):
        check_methods(adapter, registry(), ["activations"], "logit", {"activations": {"layer": "bogus"}})


def test_the_length_cap_stays():
    import marshmallow as ma

    assert ActivationsParams().load({"pattern_regex": "a" * 200})["pattern_regex"] == "a" * 200
    with pytest.raises(ma.ValidationError):
        ActivationsParams().load({"pattern_regex": "a" * 201})
