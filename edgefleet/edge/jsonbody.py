"""A WSGI request's JSON body, read and parsed within limits: the size counted on the bytes
actually read (whatever Content-Length claims), and the nesting depth (Python's parser
raises RecursionError past about a thousand levels; here it is a plain refusal)."""

from __future__ import annotations

import json
from typing import Any

from edgefleet.errors import RequestError


def read_body(environ: dict[str, Any], max_body: int) -> bytes:
    """The request body, at most ``max_body`` bytes; 411 without a length, 413 over it."""
    declared = environ.get("CONTENT_LENGTH")
    if not declared:
        # The server fills in the length of a chunked body; none at all is a client that
        # did not say how much it sends.
        raise RequestError("send a Content-Length header with the body", status=411)
    if not declared.isdigit():
        raise RequestError("the Content-Length header must be a number of bytes")
    if int(declared) > max_body:
        raise RequestError(f"the request body is over {max_body} bytes", status=413)
    data: bytes = environ["wsgi.input"].read(max_body + 1)
    if len(data) > max_body:
        raise RequestError(f"the request body is over {max_body} bytes", status=413)
    return data


def parse_json(data: bytes, max_depth: int) -> Any:
    """``data`` as JSON nested at most ``max_depth`` levels (``{"a": [1]}`` is 2)."""
    too_deep = RequestError(f"the JSON is nested deeper than {max_depth} levels, the limit")
    try:
        value = json.loads(data)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request body is not JSON") from None
    if _deeper_than(value, max_depth):
        raise too_deep
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    # Iterative: the point is to refuse what would exhaust the stack.
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
