"""The HTTP side of the JSON and text rules (service/jsontext.py): every JSON body, read by the blueprints' webargs
parser (no view calls request.get_json), and every query and path value."""
from __future__ import annotations

import json
from typing import Any

from webargs.flaskparser import FlaskParser, is_json_request

from service.jsontext import MAX_DEPTH, bad_text, invalid_text, loads  # noqa: F401 (MAX_DEPTH: read by tests)


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


def check_strings(values: dict[str, Any], where: str) -> None:
    """Query and path values: werkzeug decodes them leniently, so only a NUL can come through."""
    for name, value in values.items():
        if isinstance(value, str) and bad_text(value):
            raise invalid_text(f"{where}.{name}")
