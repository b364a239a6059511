"""The `wasi:http/incoming-handler@0.2.0` export of `pycage export`: the
second glue, adapting a standard wasi:http request to `pycage.Request` and
the handler's answer back, so that the same handler runs on any wasi:http
host (Spin, wasmCloud, `wasmtime serve`).

It answers like `pycage serve` does for the same request: the same routing
and conversion (`pycage._convert.serve`), the same small JSON bodies for
404, 405 (with `Allow`), 413 and 500, the host-owned headers dropped, and
no body for HEAD, 204, 205 and 304. What pycage's host adds on its own (a
request id, its limits on time and memory) is the other host's business.

No exception may escape `handle` (it would trap the instance): every path
ends in a response, or, when even that fails, in an error for the host.
"""

import sys
from urllib.parse import unquote

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import http_types as t
from wit_world.imports import io_streams

import pycage_build_config as config
from pycage._convert import NoRoute, serve
from pycage._http import Headers, Request

from .load import describe, format_traceback

# Headers the host sets itself (host/src/http.rs, HOST_OWNED_HEADERS): a
# handler's are dropped, as `pycage serve` drops them.
_HOST_OWNED = frozenset((
    "connection", "content-length", "keep-alive", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade",
))
# Reads ask for this much at a time; `blocking-write-and-flush` takes at
# most 4096 bytes per call.
_READ_CHUNK = 64 * 1024
_WRITE_CHUNK = 4096
_REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error"}
# The bounds `pycage serve` puts on a handler's response (host/src/http.rs).
_MAX_RESPONSE_HEADERS = 100
_MAX_RESPONSE_HEAD_BYTES = 64 << 10
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _Invalid(Exception):
    """The handler's response breaks a bound `pycage serve` enforces."""

    def __init__(self, detail=None):
        super().__init__(detail)
        self.detail = detail


class _Refused(Exception):
    """The request is answered before the handler runs."""

    def __init__(self, status, detail=None):
        super().__init__(status)
        self.status = status
        self.detail = detail


def _json_error(status, detail=None, extra=()):
    import json

    if status == 400:
        # The host's own refusal before any guest runs: the message alone.
        body = {"error": detail or _REASONS[status]}
    else:
        body = {"error": _REASONS[status]}
        if detail is not None:
            body["detail"] = detail
    text = json.dumps(body, separators=(",", ":")).encode()
    return status, [("content-type", b"application/json"), *extra], text


def _method(wit_method):
    if isinstance(wit_method, t.Method_Other):
        return wit_method.value
    return type(wit_method).__name__.removeprefix("Method_").upper()


_HEX = frozenset("0123456789abcdefABCDEF")


def _normalize(raw):
    """`normalize_path` of host/src/routing.rs: escapes of unreserved
    characters and of `/` decoded, the others' hex upper-cased, dot
    segments removed; a malformed escape is a 400."""
    if not raw.startswith("/"):
        raise _Refused(400, "the request target is not a valid path")
    out = []
    i = 0
    while i < len(raw):
        if raw[i] == "%":
            hex_digits = raw[i + 1:i + 3]
            if len(hex_digits) < 2 or not all(c in _HEX for c in hex_digits):
                raise _Refused(400, "the request target is not a valid path")
            value = int(hex_digits, 16)
            char = chr(value)
            out.append(char if char.isascii() and (char.isalnum() or char in "-._~/")
                       else "%%%02X" % value)
            i += 3
        else:
            out.append(raw[i])
            i += 1
    parts = "".join(out)[1:].split("/")
    segments = []
    for index, part in enumerate(parts):
        if part in (".", ".."):
            if part == ".." and segments:
                segments.pop()
            if index == len(parts) - 1:
                segments.append("")
        else:
            segments.append(part)
    return "/" + "/".join(segments)


def _path(normalized, target):
    """The normalized path percent-decoded (`Request::new` of
    host/src/http.rs); not UTF-8 is a 400 naming `target`."""
    try:
        return unquote(normalized, errors="strict")
    except UnicodeDecodeError:
        raise _Refused(
            400, f"invalid path `{target}`: it must start with '/' and decode to UTF-8"
        ) from None


def _too_large(size, limit):
    return _Refused(413, f"request body is {size} bytes, over the {limit}-byte limit")


def _read_body(incoming, limit, declared):
    if declared is not None and declared > limit:
        raise _too_large(declared, limit)
    body = incoming.consume()
    chunks = []
    size = 0
    with body.stream() as stream:
        while True:
            try:
                chunk = stream.blocking_read(_READ_CHUNK)
            except Err as err:
                if isinstance(err.value, io_streams.StreamError_Closed):
                    break
                raise _Refused(400, "could not read the request body") from None
            size += len(chunk)
            if size > limit:
                raise _too_large(limit + 1, limit)
            chunks.append(chunk)
    t.IncomingBody.finish(body)
    return b"".join(chunks)


def _request(incoming, method):
    target = incoming.path_with_query() or "/"
    raw_path, sep, query = target.partition("?")
    normalized = _normalize(raw_path)
    path = _path(normalized, normalized + sep + query)
    with incoming.headers() as fields:
        pairs = [(name, value.decode("latin-1")) for name, value in fields.entries()]
    # wasi:http hosts strip `Host` (a forbidden header) and pass the
    # authority instead: put it back where handlers look for it.
    authority = incoming.authority()
    if authority and not any(name.lower() == "host" for name, _ in pairs):
        pairs.insert(0, ("host", authority))
    declared = None
    for name, value in pairs:
        if name.lower() == "content-length" and value.isdigit():
            declared = int(value)
    body = _read_body(incoming, config.MAX_REQUEST_BODY, declared)
    return Request(method, path, query, Headers(pairs), body)


def _checked(status, headers, body):
    """The response as `pycage serve` sends it: the same bounds, header
    names lower-cased, host-owned headers dropped, no body where the status
    has none."""
    if len(headers) > _MAX_RESPONSE_HEADERS:
        raise _Invalid()
    head = sum(len(name) + len(value) + 4 for name, value in headers)
    if head > _MAX_RESPONSE_HEAD_BYTES:
        raise _Invalid()
    if status in (204, 205, 304):
        body = b""
    if len(body) + head > config.MAX_RESPONSE_BODY:
        raise _Invalid(f"response body is over the {config.MAX_RESPONSE_BODY}-byte limit")
    kept = []
    for name, value in headers:
        raw = name.encode("latin-1", "replace")
        if not raw or not all(c in _TOKEN for c in raw):
            raise _Invalid()
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            raise _Invalid()
        name = name.lower()
        if name not in _HOST_OWNED:
            kept.append((name, value))
    return status, kept, body


def _answer(incoming, method):
    """(status, headers, body) for the request; never raises."""
    try:
        if method is None:
            raise RuntimeError("the host gave no readable method")
        request = _request(incoming, method)
        try:
            status, headers, body = serve(request)
        except NoRoute as miss:
            if miss.allowed is None:
                return _json_error(404)
            return _json_error(405, extra=[("allow", ", ".join(miss.allowed).encode())])
        return _checked(status, headers, body)
    except _Refused as refused:
        return _json_error(refused.status, refused.detail)
    except _Invalid as invalid:
        _log(lambda: "pycage: the handler's response was refused: "
             + (invalid.detail or "an invalid header, or too many headers"))
        return _json_error(500, invalid.detail)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included
        # The traceback goes to the host's log (stderr), never to the client.
        _log(lambda: f"pycage: the handler raised {describe(exc)}\n{format_traceback(exc)}")
        return _json_error(500)


def _log(text):
    """Print `text()` to stderr (the host's log); nothing it raises escapes."""
    try:
        print(text(), file=sys.stderr)
    except BaseException:
        pass


def _send(response_out, method, status, headers, body):
    """Set the response and write its body; returns once the outparam is
    set or raises before. Headers were checked (`_checked`) and are within
    the bounds that keep wasmtime-wasi-http's own field limit out of reach."""
    fields = t.Fields()
    for name, value in headers:
        try:
            fields.append(name, value)
        except Err:
            pass  # a header this host forbids: dropped
    # As `pycage serve` (hyper) does: a length for every body but a HEAD
    # response's and one a status forbids.
    if method != "HEAD" and status not in (204, 205, 304):
        fields.append("content-length", str(len(body)).encode())
    response = t.OutgoingResponse(fields)
    response.set_status_code(status)
    outgoing = response.body()
    t.ResponseOutparam.set(response_out, Ok(response))
    return outgoing


def _write(outgoing, body):
    with outgoing.write() as stream:
        view = memoryview(body)
        for start in range(0, len(view), _WRITE_CHUNK):
            stream.blocking_write_and_flush(bytes(view[start:start + _WRITE_CHUNK]))
    t.OutgoingBody.finish(outgoing, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        with request:
            try:
                method = _method(request.method())
            except BaseException:
                method = None  # answered with a 500 by `_answer`
            status, headers, body = _answer(request, method)
        if method == "HEAD":
            body = b""  # errors included, as `pycage serve` answers HEAD
        try:
            outgoing = _send(response_out, method, status, headers, body)
        except BaseException as exc:
            # Not set: answer with the plain error instead.
            _log(lambda: f"pycage: the response could not be made: {describe(exc)}")
            status, headers, body = _json_error(500)
            if method == "HEAD":
                body = b""
            try:
                outgoing = _send(response_out, method, status, headers, body)
            except BaseException:
                return
        try:
            _write(outgoing, body)
        except BaseException as exc:
            # The client went away, or the host refused the body: nothing
            # more can be said to anyone but the log.
            _log(lambda: f"pycage: sending the response failed: {describe(exc)}")
