"""Turning whatever a handler returned into (status, headers, body bytes)."""

import json

from ._http import Response

__all__ = ["to_wire"]

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_BINARY = "application/octet-stream"


def _encode_body(body):
    """(bytes, implied content-type or None) for a Response body."""
    if body is None:
        return b"", None
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), _BINARY
    if isinstance(body, str):
        return body.encode("utf-8"), _TEXT
    if isinstance(body, (dict, list)):
        # allow_nan=False: NaN/Infinity are not JSON and would break clients.
        text = json.dumps(body, ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8"), _JSON
    raise TypeError(
        f"cannot send a {type(body).__name__} as a response body; "
        "return a dict, list, str, bytes, None or a pycage.Response"
    )


def _header_pair(pair):
    try:
        name, value = pair
    except (TypeError, ValueError):
        raise TypeError(f"response header must be a (name, value) pair, got {pair!r}") from None
    if not isinstance(name, str):
        raise TypeError(f"response header name must be a str, got {name!r}")
    if isinstance(value, (bytes, bytearray)):
        return name, bytes(value)
    if not isinstance(value, (str, int)):
        raise TypeError(f"response header {name!r} must be a str, got {type(value).__name__}")
    try:
        return name, str(value).encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"response header {name!r} is not Latin-1 encodable: {value!r}") from None


def to_wire(result):
    """Normalise a handler's return value.

    dict / list -> JSON, str -> UTF-8 text, bytes -> octet-stream,
    None -> 204 No Content, Response -> as given, (body, status) and
    (body, status, headers) tuples -> like Response(body, status, headers).
    """
    if isinstance(result, Response):
        response = result
    elif result is None:
        response = Response(None, status=204)
    elif isinstance(result, tuple):
        if not 2 <= len(result) <= 3:
            raise TypeError("a returned tuple must be (body, status) or (body, status, headers)")
        response = Response(*result)
    else:
        response = Response(result)

    status = response.status
    # 1xx are interim responses the host never sends on a handler's behalf.
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"response status must be an int in 200..599, got {status!r}")
    body, implied_type = _encode_body(response.body)
    headers = [_header_pair(pair) for pair in response.headers]
    if implied_type and not any(name.lower() == "content-type" for name, _ in headers):
        headers.insert(0, ("content-type", implied_type.encode("latin-1")))
    return status, headers, body

