"""What Lantern accepts as JSON and as text, in one place, for every way JSON comes in (a request body, a line of an
uploaded corpus). A document nested deeper than MAX_DEPTH is a 400 (Python's parser would raise RecursionError near
1,000 levels, and every later json.dumps or SQL JSON column would recurse again); a string holding a lone surrogate
or a NUL is a 422 "invalid text" (neither can be encoded as UTF-8 or stored in PostgreSQL, so accepting one only
moves the failure to a later, 500-answering step)."""
from __future__ import annotations

import json
from typing import Any

from service.errors import Problem, invalid

MAX_DEPTH = 32  # our deepest request (audit → corpus → items → item → field) is 5 levels


def too_deep(where: str = "the request body") -> Problem:
    return Problem(400, "Bad request", f"{where} is nested more than {MAX_DEPTH} levels deep")


def bad_text(value: str) -> bool:
    """A lone surrogate (json.loads joins valid pairs, so any left is lone) or a NUL."""
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def invalid_text(field: str) -> Problem:
    return invalid("invalid text: a lone UTF-16 surrogate or a NUL character", field)


def check_document(doc: Any, where: str = "the request body") -> None:
    """Walk the parsed document without recursion: depth, then every key and string value."""
    stack = [(doc, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise too_deep(where)
        if isinstance(value, str):
            if bad_text(value):
                raise invalid_text(path or "body")
        elif isinstance(value, dict):
            for key, item in value.items():
                if bad_text(key):  # named by its parent: the key itself is the bad text
                    raise invalid_text(path or "body")
                stack.append((item, depth + 1, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{path}[{n}]") for n, item in enumerate(value))


def loads(data: str | bytes, where: str = "the request body") -> Any:
    """json.loads, then check_document. Raises ValueError for text that is not JSON, as json.loads does."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise too_deep(where) from None
    check_document(doc, where)
    return doc
