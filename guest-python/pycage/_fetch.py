"""Outbound HTTP through the host (`allowed_outbound_hosts` in pycage.toml),
on the standard `wasi:http/outgoing-handler` interface.

    from pycage import fetch, FetchError

    r = fetch("https://api.example.com/w?q=paris", headers={"Accept": "application/json"},
              timeout=2.0)
    r.status, r.headers["content-type"], r.json()

The host decides what may be reached: a host not in the tenant's
allow-list, a name that resolves to a private address, too many requests
or too many bytes raise `FetchError` with the reason. Redirects are
followed (at most `max_redirects`), each one checked by the host again, so
a redirect to a host that is not allowed fails rather than being followed.

`fetch` blocks until the response is read; `await fetch_async(...)` (same
arguments) waits in the event loop instead, so that several requests run
at once (`asyncio.gather`) and `asyncio.wait_for` can give up on one. Both
run the same steps (`_steps`), a generator that yields each `wasi:io`
pollable it must wait for: `fetch` blocks on it, `fetch_async` awaits it.
"""

import json as _json
from urllib.parse import urljoin, urlsplit

from . import _capabilities
from ._http import Headers

# For type checkers only: annotations that name these are strings, never
# evaluated, so that the sandbox does not import `typing` for them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, Union

    RequestHeaders = Union[
        Mapping[str, Union[str, bytes, int]], Iterable[tuple[str, Union[str, bytes, int]]]
    ]

__all__ = ["fetch", "fetch_async", "FetchError", "FetchResponse"]

_REDIRECTS = {301, 302, 303, 307, 308}
_READ_CHUNK = 64 * 1024


class FetchError(Exception):
    """An outbound request failed or was refused; the message says why."""


class FetchResponse:
    """A response to `fetch`: `status`, `headers` (case-insensitive),
    `body` (bytes), `url` (after redirects), `.text`, `.json()`."""

    __slots__ = ("status", "headers", "body", "url")

    status: int
    headers: "Headers"
    body: bytes
    url: str

    def __init__(self, status: int, headers: "Headers", body: bytes, url: str) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.url = url

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        """The body decoded with the declared charset (UTF-8 by default)."""
        charset = "utf-8"
        for param in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset":
                charset = value.strip().strip('"') or "utf-8"
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> "Any":
        """The body parsed as JSON."""
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return f"<FetchResponse {self.status} {self.url}>"


def fetch(url: str, *, method: str = "GET", headers: "RequestHeaders | None" = None,
          body: "bytes | str | None" = None, json: "Any" = None, timeout: "float | None" = None,
          allow_redirects: bool = True, max_redirects: int = 5) -> "FetchResponse":
    """Send a request and return its `FetchResponse` (see the module docs).

    `body` is bytes or str; `json` is sent as JSON (with its content type).
    `timeout` (seconds) bounds connecting and each wait for data; the
    request's own deadline bounds everything in any case.
    """
    _capabilities.require("outbound HTTP")
    steps = _steps(url, method, headers, body, json, timeout, allow_redirects, max_redirects)
    try:
        pollable = next(steps)
        while True:
            with pollable:
                pollable.block()
            pollable = steps.send(None)
    except StopIteration as done:
        return done.value


async def fetch_async(url: str, *, method: str = "GET", headers: "RequestHeaders | None" = None,
                      body: "bytes | str | None" = None, json: "Any" = None,
                      timeout: "float | None" = None, allow_redirects: bool = True,
                      max_redirects: int = 5) -> "FetchResponse":
    """`fetch`, awaited: the event loop runs other tasks while this one waits
    for the network. Cancelling it (`asyncio.wait_for`, a task's `cancel()`)
    drops the request."""
    import asyncio

    from . import _aio

    _capabilities.require("outbound HTTP")
    # Before anything is sent: without a running loop this raises here.
    loop = asyncio.get_running_loop()
    ours = isinstance(loop, _aio.loop_class())
    steps = _steps(url, method, headers, body, json, timeout, allow_redirects, max_redirects)
    try:
        pollable = next(steps)
        while True:
            try:
                if ours:
                    await loop.wait_ready(pollable)
                else:
                    # Another loop cannot wait on a WASI pollable: block.
                    with pollable:
                        pollable.block()
            except BaseException:
                # Cancelled, or the coroutine closed: the pollable goes
                # first, from whatever still holds it, then the resources
                # it was made from (a parent dropped before its child traps).
                if ours:
                    loop.forget(pollable)
                _aio.drop_pollable(pollable)
                steps.close()
                raise
            pollable = steps.send(None)
    except StopIteration as done:
        return done.value


def _steps(url, method, headers, body, json, timeout, allow_redirects, max_redirects):
    """Everything `fetch` does; yields each pollable to wait for and returns
    the response."""
    if json is not None:
        if body is not None:
            raise TypeError("give body or json, not both")
        body = _json.dumps(json).encode("utf-8")
        headers = dict(headers or {})
        headers.setdefault("content-type", "application/json")
    if isinstance(body, str):
        body = body.encode("utf-8")
    if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"body is bytes or str, not {type(body).__name__}")
    pairs = _header_pairs(headers)
    method = method.upper()
    for _ in range(max_redirects + 1):
        response = yield from _send(method, url, pairs, None if body is None else bytes(body), timeout)
        location = response.headers.get("location")
        if not (allow_redirects and response.status in _REDIRECTS and location):
            return response
        previous, url = url, urljoin(url, location)
        if _origin(url) != _origin(previous):
            # Credentials were meant for the origin they were given to, as
            # browsers and requests have it.
            pairs = [(k, v) for k, v in pairs if k not in _CREDENTIAL_HEADERS]
        if response.status == 303 or (response.status in (301, 302) and method == "POST"):
            method, body = "GET", None
            pairs = [(k, v) for k, v in pairs if k not in ("content-type", "content-length")]
    raise FetchError(f"more than {max_redirects} redirects, last to {url}")


_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")


def _origin(url):
    parts = urlsplit(url)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)


def _header_pairs(headers):
    if headers is None:
        return []
    items = headers.items() if hasattr(headers, "items") else headers
    pairs = []
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError(f"a header name is a str, not {type(name).__name__}")
        if isinstance(value, str):
            value = value.encode("latin-1")
        elif not isinstance(value, (bytes, bytearray)):
            value = str(value).encode("latin-1")
        pairs.append((name.lower(), bytes(value)))
    return pairs


# What the common wasi:http error codes mean, for FetchError's message.
_REASONS = {
    "DnsError": "could not resolve the host name",
    "DnsTimeout": "resolving the host name timed out",
    "DestinationNotFound": "the host was not found",
    "DestinationUnavailable": "the host is unavailable",
    "DestinationIpProhibited": "the host's address is not allowed",
    "DestinationIpUnroutable": "the host's address is unroutable",
    "ConnectionRefused": "the connection was refused",
    "ConnectionTerminated": "the connection was closed",
    "ConnectionTimeout": "connecting timed out",
    "ConnectionReadTimeout": "waiting for the response timed out",
    "ConnectionWriteTimeout": "sending the request timed out",
    "TlsProtocolError": "the TLS handshake failed",
    "TlsCertificateError": "the server's TLS certificate is not valid for it",
    "HttpRequestDenied": "the host denied the request",
    "HttpResponseBodySize": "the response is over this request's byte limit",
    "HttpProtocolError": "the server's response is not valid HTTP",
}


def _error(code, url):
    """A FetchError for a wasi:http error-code."""
    from wit_world.imports import http_types

    if isinstance(code, http_types.ErrorCode_InternalError) and code.value:
        return FetchError(code.value)
    name = type(code).__name__.removeprefix("ErrorCode_")
    reason = _REASONS.get(name)
    if reason is None:
        detail = getattr(code, "value", None)
        reason = name + (f" ({detail})" if detail not in (None, "") else "")
    return FetchError(f"{url}: {reason}")


def _send(method, url, pairs, body, timeout):
    from componentize_py_types import Err, Ok
    from wit_world.imports import http_types, io_streams, outgoing_handler

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"{url}: only http and https URLs can be fetched")
    if not parts.hostname or "@" in parts.netloc:
        raise FetchError(f"{url}: the URL needs a host (and no user or password)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if body is not None and not any(k == "content-length" for k, _ in pairs):
        pairs = pairs + [("content-length", str(len(body)).encode())]
    try:
        fields = http_types.Fields.from_list(pairs)
    except Err as err:
        if isinstance(err.value, http_types.HeaderError_Forbidden):
            raise FetchError(
                f"{url}: a forbidden header (one the host sets itself, such as Host or Connection)"
            ) from None
        raise FetchError(f"{url}: invalid request headers") from None
    request = http_types.OutgoingRequest(fields)
    methods = {
        "GET": http_types.Method_Get, "HEAD": http_types.Method_Head,
        "POST": http_types.Method_Post, "PUT": http_types.Method_Put,
        "DELETE": http_types.Method_Delete, "OPTIONS": http_types.Method_Options,
        "PATCH": http_types.Method_Patch, "TRACE": http_types.Method_Trace,
    }
    request.set_method(methods[method]() if method in methods else http_types.Method_Other(method))
    request.set_scheme(http_types.Scheme_Https() if scheme == "https" else http_types.Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query(path)
    options = None
    if timeout is not None:
        options = http_types.RequestOptions()
        nanos = max(1, int(timeout * 1e9))
        for setter in (options.set_connect_timeout, options.set_first_byte_timeout,
                       options.set_between_bytes_timeout):
            setter(nanos)
    outgoing = request.body()
    try:
        future = outgoing_handler.handle(request, options)
    except Err as err:
        raise _error(err.value, url) from None
    # The body after `handle`: the host sends it as it is written, so a
    # body bigger than the host's buffer cannot stall before the request.
    with future:
        if body:
            with outgoing.write() as stream:
                try:
                    yield from _write_all(stream, body)
                except Err as err:
                    raise FetchError(f"{url}: sending the body failed: {_failure(err.value)}") from None
        http_types.OutgoingBody.finish(outgoing, None)
        yield future.subscribe()
        result = future.get()
    if result is None:
        raise FetchError(f"{url}: no response")
    if isinstance(result, Err) or isinstance(result.value, Err):
        code = result.value.value if isinstance(result, Ok) else None
        raise _error(code, url) if code is not None else FetchError(f"{url}: no response")
    response = result.value.value
    with response:
        status = response.status()
        with response.headers() as header_fields:
            headers = Headers((k, v.decode("latin-1")) for k, v in header_fields.entries())
        incoming = response.consume()
        chunks = []
        with incoming.stream() as stream:
            while True:
                try:
                    chunk = stream.read(_READ_CHUNK)
                except Err as err:
                    if isinstance(err.value, io_streams.StreamError_Closed):
                        break
                    raise FetchError(f"{url}: reading the response failed: {_failure(err.value)}") from None
                if chunk:
                    chunks.append(chunk)
                else:
                    yield stream.subscribe()
        http_types.IncomingBody.finish(incoming)
    return FetchResponse(status, headers, b"".join(chunks), url)


def _write_all(stream, data):
    """Write `data` to a wasi:io output stream as it accepts it, then flush;
    yields a pollable whenever the stream is full."""
    from componentize_py_types import Err
    from wit_world.imports import io_streams

    offset = 0
    while offset < len(data):
        room = stream.check_write()
        if room == 0:
            yield stream.subscribe()
            continue
        chunk = data[offset:offset + room]
        stream.write(chunk)
        offset += len(chunk)
    try:
        stream.flush()
        while stream.check_write() == 0:
            yield stream.subscribe()
    except Err as err:
        # Every byte is written: the host may already have sent them all
        # (the declared length) and closed the stream. A failure to send
        # them is the response's error, reported by `future.get`.
        if not isinstance(err.value, io_streams.StreamError_Closed):
            raise


def _failure(stream_error):
    """The reason for a failed read or write (a response over the byte
    limit, a dropped connection), from the wasi:http error code in it."""
    from wit_world.imports import http_types

    error = getattr(stream_error, "value", None)
    if error is None:
        return "the stream failed"
    code = http_types.http_error_code(error)
    if code is None:
        return "the stream failed"
    name = type(code).__name__.removeprefix("ErrorCode_")
    if name == "HttpResponseBodySize" and getattr(code, "value", None):
        return f"the responses are over this request's limit of {code.value} bytes"
    return _REASONS.get(name, name)
