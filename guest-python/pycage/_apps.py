"""Serving an existing WSGI or ASGI app (Flask, Bottle, Falcon, Starlette,
FastAPI...) instead of `@route` functions.

A handler whose entry module declares no routes but has an `app` (or
`application`) attribute that is a WSGI or ASGI callable is served as that
app, the way gunicorn and uvicorn find it. Every request is still a fresh
instance: the app object comes from the snapshot, already imported.

- WSGI (PEP 3333): `app(environ, start_response)`; the body iterable is
  collected (and closed) into the response; `wsgi.run_once` is true.
- ASGI 3 (HTTP only): `await app(scope, receive, send)` on pycage's event
  loop; `receive` gives the whole body once, then `http.disconnect` after
  the response is complete; streamed response bodies are collected. No
  lifespan events are sent: there is no server life to speak of, and
  startup work belongs at import time (where it is part of the snapshot).
"""

import inspect
import sys
from urllib.parse import quote

__all__ = ["APP", "find", "named", "call"]

# The app being served, with its kind and where it was found; set at build.
APP = None

_ATTRIBUTES = ("app", "application")


class App:
    __slots__ = ("obj", "kind", "name")

    def __init__(self, obj, kind, name):
        self.obj = obj
        self.kind = kind
        self.name = name


class Wire:
    """A response already in wire form: (status, [(name, bytes)], body)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body


def find(module):
    """The WSGI or ASGI app `module` offers, or None."""
    for attribute in _ATTRIBUTES:
        obj = getattr(module, attribute, None)
        if obj is not None and _servable(obj):
            return _app(module, attribute, obj)
    return None


def named(module, attribute):
    """The app at `module.attribute` (`--module MODULE:APP`)."""
    if not hasattr(module, attribute):
        raise AttributeError(f"module {module.__name__!r} has no attribute {attribute!r} to serve as an app")
    obj = getattr(module, attribute)
    if not _servable(obj):
        raise TypeError(
            f"{module.__name__}:{attribute} is a {type(obj).__name__}, not a WSGI or ASGI app"
        )
    return _app(module, attribute, obj)


def _servable(obj):
    return callable(obj) and not inspect.isclass(obj) and not inspect.ismodule(obj)


def _app(module, attribute, obj):
    kind = "asgi" if is_async_callable(obj) else "wsgi"
    return App(obj, kind, f"{module.__name__}:{attribute}")


def is_async_callable(obj):
    """Whether calling `obj` gives a coroutine: an `async def` function, or
    an object whose class's `__call__` is one (an ASGI app such as
    Starlette's)."""
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(type(obj), "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)


def call(app, request):
    if app.kind == "wsgi":
        return _wsgi(app.obj, request)
    from . import _aio

    return _aio.run(_asgi(app.obj, request))


def _server(request):
    host = request.headers.get("host", "")
    name, _, port = host.rpartition(":")
    if not name or not (port.isascii() and port.isdigit()) or len(port) > 5:
        return host or "localhost", "80"
    return name, port


def _query_bytes(request):
    # The query string arrives as text; any byte over 0x7f in it was UTF-8.
    return request.query_string.encode("utf-8")


def _raw_path(request):
    # The host hands over the percent-decoded path; this is one faithful
    # encoding of it (what the client sent may have escaped more).
    return quote(request.path, safe="/:@!$&'()*+,;=-._~").encode("ascii")


def _wsgi(app, request):
    import io

    name, port = _server(request)
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        # PEP 3333: native strings holding the bytes as Latin-1.
        "PATH_INFO": request.path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": _query_bytes(request).decode("latin-1"),
        "SERVER_NAME": name,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": True,
        "wsgi.input_terminated": True,
    }
    for key, value in request.headers.items(multi=True):
        if "_" in key:
            # X_Forwarded_For would land on HTTP_X_FORWARDED_FOR and pass
            # for the proxy's header (gunicorn drops them too).
            continue
        key = key.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
            continue
        key = "HTTP_" + key
        if key in environ:
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        environ[key] = value
    if request.body and "CONTENT_LENGTH" not in environ:
        environ["CONTENT_LENGTH"] = str(len(request.body))

    started = []
    chunks = []

    def start_response(status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if started and started[-1][2]:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif started:
            raise AssertionError("start_response called twice without exc_info")
        started.append([status, headers, False])
        return write

    def write(data):
        # Bytes written count as headers sent (PEP 3333's exc_info rule).
        if started:
            started[-1][2] = True
        chunks.append(bytes(data))

    result = app(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                if started:
                    started[-1][2] = True
                chunks.append(bytes(chunk))
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the WSGI app returned without calling start_response")
    status, headers, _ = started[-1]
    code = _status_code(status)
    return Wire(code, _latin1_headers(headers), b"".join(chunks))


def _status_code(status):
    try:
        return int(str(status).split(None, 1)[0])
    except (ValueError, IndexError):
        raise ValueError(f"the app sent an invalid status line: {status!r}") from None


def _latin1_headers(headers):
    pairs = []
    for name, value in headers:
        if isinstance(value, str):
            value = value.encode("latin-1")
        pairs.append((str(name), bytes(value)))
    return pairs


async def _asgi(app, request):
    import asyncio

    name, port = _server(request)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": _raw_path(request),
        "query_string": _query_bytes(request),
        "root_path": "",
        "headers": [
            (key.lower().encode("latin-1"), value.encode("latin-1"))
            for key, value in request.headers.items(multi=True)
        ],
        "client": None,
        "server": (name, int(port)),
        "state": {},
    }
    body_sent = [False]
    finished = asyncio.Event()
    start = {}
    chunks = []

    async def receive():
        if not body_sent[0]:
            body_sent[0] = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        kind = message.get("type")
        if kind == "http.response.start":
            if start:
                raise RuntimeError("http.response.start sent twice")
            start["status"] = int(message["status"])
            start["headers"] = [(bytes(k).decode("latin-1"), bytes(v)) for k, v in message.get("headers", ())]
        elif kind == "http.response.body":
            if not start:
                raise RuntimeError("http.response.body sent before http.response.start")
            if finished.is_set():
                return
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                finished.set()
        else:
            raise RuntimeError(f"pycage serves HTTP only; the app sent {kind!r}")

    try:
        await app(scope, receive, send)
    except Exception:
        # Work after a complete response (a background task) failing does
        # not undo the response: the client gets it, the operator the error.
        if not finished.is_set():
            raise
        import traceback

        traceback.print_exc()
    if not start:
        raise RuntimeError("the ASGI app returned without starting a response")
    finished.set()
    return Wire(start["status"], start["headers"], b"".join(chunks))
