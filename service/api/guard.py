"""What the API accepts as JSON and as text, in one place: every JSON body (read by the blueprints' webargs
parser; no view calls request.get_json), every JSON line of an upload, every query and path value. A document nested deeper than MAX_DEPTH is a 400 (Python's
parser would raise RecursionError near 1,000 levels, and every later json.dumps or SQL JSON column would recurse
again); a string holding a lone surrogate or a NUL is a 422 "invalid text" (neither can be encoded as UTF-8 or
stored in PostgreSQL, so accepting one only moves the failure to a later, 500-answering step)."""
from __future__ import annotations

import json
from typing import Any

from webargs.flaskparser import FlaskParser, is_json_request

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


class Parser(FlaskParser):
    """webargs' Flask parser with the same rules for JSON bodies, and query/path strings checked as text."""

    def _raw_load_json(self, req):
        from webargs import core

        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        try:
            return loads(data)
        except UnicodeDecodeError as e:  # webargs answers a 400 for these, as for any other unparseable body
            raise json.JSONDecodeError(f"Bytes decoding error : {e.reason}", doc=str(e.object), pos=e.start) from e


def check_upload_lines(data: bytes) -> None:
    """A corpus file's JSON lines, before the corpus parser reads them: the same depth and text rules.
    Lines that are not JSON are left to the corpus parser (they may be CSV rows, or a mistake it reports)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return  # the corpus parser reports the offset
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip()[:1] in ("{", "["):
            try:
                loads(line, f"line {n} of the file")
            except ValueError:
                continue
            except Problem as e:
                raise _on_line(e, n) from None


def _on_line(problem: Problem, n: int) -> Problem:
    if problem.status == 422:
        return invalid(f"line {n}: invalid text: a lone UTF-16 surrogate or a NUL character", "file")
    return problem


def check_strings(values: dict[str, Any], where: str) -> None:
    """Query and path values: werkzeug decodes them leniently, so only a NUL can come through."""
    for name, value in values.items():
        if isinstance(value, str) and bad_text(value):
            raise invalid_text(f"{where}.{name}")
