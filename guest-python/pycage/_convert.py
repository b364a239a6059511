"""Serving one request: the route (or the app) called, and whatever it
returned turned into (status, headers, body bytes).

`serve` is the whole of it. The sandbox's WIT export (`pycage._glue.
exports`) and `pycage.testing.TestClient` both call it, so a test on the
host runs the same routing and conversion code as the sandbox.
"""

import json

from . import _aio, _apps, _router
from ._http import HTTPError, Response

__all__ = ["to_wire", "serve", "wire", "NoRoute"]

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



# What plain handlers return, told apart from an awaitable by type alone:
# `inspect.isawaitable` would ask collections.abc.Awaitable, whose checks
# write to its caches in every request.
_PLAIN = (dict, list, str, bytes, tuple, type(None), Response)

try:
    _Group = BaseExceptionGroup
except NameError:  # Python 3.10 (pycage.testing on the host): no groups exist
    class _Group(BaseException):  # type: ignore[no-redef]
        exceptions: tuple[BaseException, ...] = ()


class NoRoute(Exception):
    """No route answers the request: `allowed` is None when no pattern
    matches the path (404), else the methods that would have been (405)."""

    def __init__(self, allowed=None):
        super().__init__(allowed)
        self.allowed = allowed


def serve(request):
    """Answer `request` (a `Request`): with the app being served, or with
    the route the router matches. Returns (status, headers, body), the body
    empty for HEAD. Raises `NoRoute` when no route answers; anything else the
    handler or the conversion raises (but `HTTPError`) propagates."""
    if _apps.APP is not None:
        return wire(request.method, _apps.call(_apps.APP, request))
    try:
        route, params = _router.match(request.method, request.path)
    except _router.NotFound:
        raise NoRoute() from None
    except _router.MethodNotAllowed as exc:
        raise NoRoute(exc.allowed) from None
    request.path_params = params
    try:
        result = route.func(request, **params) if route.wants_request else route.func(**params)
        if type(result) not in _PLAIN and hasattr(type(result), "__await__"):
            # An `async def` handler: run it on a fresh event loop.
            result = _aio.run(result)
    except HTTPError as exc:
        result = exc.to_response()
    except _Group as group:
        # An HTTPError raised in a TaskGroup arrives wrapped: answer with
        # it when the group holds nothing else.
        first = _only_http_errors(group)
        if first is None:
            raise
        result = first.to_response()
    return wire(request.method, result)


def _only_http_errors(group):
    """The first HTTPError of `group` if every exception in it is one."""
    first = None
    for exc in group.exceptions:
        if isinstance(exc, _Group):
            exc = _only_http_errors(exc)
        if not isinstance(exc, HTTPError):
            return None
        first = first or exc
    return first


def wire(method, result):
    """(status, headers, body) for what a route or an app returned; the
    body is dropped for HEAD."""
    if type(result) is _apps.Wire:
        status, response_headers, body = result.status, result.headers, result.body
        if not 200 <= status <= 599:
            raise ValueError(f"the app answered with status {status}, not one in 200..599")
    else:
        status, response_headers, body = to_wire(result)
    if method == "HEAD":
        body = b""
    return status, response_headers, body
