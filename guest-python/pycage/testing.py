"""Testing pycage handlers on your own Python (pytest, unittest), without
building a sandbox.

    from pycage.testing import TestClient

    client = TestClient("handler.py", kv={"default": {}}, config={"region": "eu"})
    r = client.get("/hello/ada")
    assert r.status == 200 and r.json() == {"hello": "ada"}

What is the same as in the sandbox: the handler module is imported the way
the build imports it (capabilities refused during the import), and each
request goes through the very code the sandbox runs: the router
(`pycage._router`), the `Request` object, the handler's call (sync or
`async def`), `HTTPError`, the response conversion (`pycage._convert.serve`,
which the sandbox's WIT export calls too) and WSGI/ASGI app serving
(`pycage._apps`). `pycage.kv`, `pycage.config` and `pycage.fetch` run their
own code too, down to the host's interfaces, which are faked (below).

What is NOT the same; read this before trusting a green test:

- Nothing is sandboxed. The handler runs in your interpreter, with your
  files, network, environment variables and threads. The sandbox's limits
  (time, memory, request and response sizes, key-value quotas per store)
  are not enforced, and `/app` does not exist here.
- It is not a fresh interpreter per request. Module globals, caches and
  monkey-patches persist from one request of a client to the next (in the
  sandbox they never do), unless the client was made with `fresh=True`,
  which re-imports the handler's own modules before every request. Even
  then modules outside the handler's tree (the standard library, installed
  packages) and process-wide state persist. Each client imports the
  handler anew and has its own route table; two clients share nothing but
  the process.
- Your Python, not the sandbox's: another CPython version maybe, with its
  full standard library (the sandbox has no threads, subprocesses or
  sockets, and fills some gaps, see `pycage._compat`; none of that applies
  here). `async def` handlers and ASGI apps run on a standard asyncio event
  loop (`asyncio.run`), not on pycage's own loop.
- Capabilities are fakes, given explicitly to each client:
  - `kv`: a dict per granted store name, in memory, kept by the client
    (`client.kv`) across its requests. `pycage.kv` runs its real code
    against stand-ins for the host's `wasi:keyvalue` interfaces, so the API
    and the errors are the sandbox's: a store not granted raises
    `KeyValueError`, so do a key over 1 KiB, a value over 1 MiB and more
    than 1,000 operations in one request (the host's default limits);
    `increment` keeps an ASCII decimal integer; `list_keys` pages 1,000 keys
    in key order. Not imitated: the per-store quotas (keys, bytes).
  - `config`: the dict given (str values), through the same stand-in
    approach; a name not in it is not set.
  - `fetch`: the function given, called with a `FetchRequest` for every
    outbound request `pycage.fetch` / `fetch_async` sends (redirects
    included, which pycage follows as usual); it returns a
    `pycage.FetchResponse` or anything a handler may return (a dict is a
    JSON 200, `(body, status)`, `pycage.Response`...), or raises
    `pycage.FetchError`. Without it every fetch raises `CapabilityError`
    ("outbound HTTP is not granted in this TestClient"). The host's own
    checks (the allow-list, private addresses, forbidden headers) are not
    made. Requests sent are recorded in `client.fetches`.
  - Using a capability while the handler is imported raises
    `CapabilityError`, as at build time.
- The host's side of HTTP is imitated: the path is percent-decoded, header
  names arrive lower-cased, a `host` header is added ("testserver"), and
  `content-length` for a body. A 404 or 405 (with `allow`) is the host's
  JSON error body; an exception escaping the handler is a 500 with
  `{"error": "Internal Server Error"}` (its traceback is printed to stderr
  and kept in `response.exception`; `raise_exceptions=True` re-raises it
  instead). A response the host would refuse (an invalid header, over 100
  headers) is a 500 too, with the reason in `response.error`. Framing
  headers (`content-length`, `connection`...) are dropped from responses,
  as are the bodies of 204, 205, 304 and HEAD responses.

While a request (or a client's import of the handler) runs, the client
swaps its own state into the process: pycage's route table and app, the
capability fakes, the handler's modules in `sys.modules`, and, as in the
sandbox, the handler's directory as the working directory and (for a
directory handler, with its `vendor/`) at the front of `sys.path`; all of
it is restored afterwards. (A single-file handler is alone in the sandbox:
the files beside it are not importable there, whatever your `sys.path`
makes importable here.) Requests are serialised by a lock, and a client
must not be used from inside a running event loop.
"""

from __future__ import annotations

import contextlib
import json as _json
import os
import re
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union
from urllib.parse import unquote, urlencode, urlsplit

from . import _aio, _apps, _capabilities, _convert, _fetch, _router
from ._capabilities import CapabilityError
from ._fetch import FetchResponse
from ._http import Headers, Request

__all__ = ["TestClient", "TestResponse", "FetchRequest", "NoRoutes"]

HeaderValue = Union[str, bytes, int]
HeaderItems = Union[Mapping[str, HeaderValue], Iterable[tuple[str, HeaderValue]]]
QueryItems = Union[Mapping[str, Any], Iterable[tuple[str, Any]], str]

# The host's default key-value limits (host/src/limits.rs, KvLimits).
KV_MAX_KEY_BYTES = 1 << 10
KV_MAX_VALUE_BYTES = 1 << 20
KV_MAX_OPS = 1000
KV_PAGE = 1000
# What the host allows a response's headers (host/src/http.rs).
MAX_RESPONSE_HEADERS = 100
MAX_RESPONSE_HEAD_BYTES = 64 << 10
# The host's route table limit (host/src/runtime/handler.rs, MAX_ROUTES).
MAX_ROUTES = 4096
# Where the host looks for the entry module of a directory handler.
ENTRY_CANDIDATES = ("app", "handler", "main")

_HOST_OWNED_HEADERS = frozenset({
    "connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade",
})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_REASONS = {404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
_BINDINGS = (
    "componentize_py_types", "wit_world", "wit_world.imports", "wit_world.imports.kv_store",
    "wit_world.imports.kv_atomics", "wit_world.imports.config_store",
)
_ABSENT = object()

# One request (or import) at a time in the process: each swaps in its
# client's route table, app, capability fakes and modules.
_LOCK = threading.RLock()


class NoRoutes(Exception):
    """The handler declares no routes and offers no WSGI or ASGI app."""


class FetchRequest:
    """An outbound request the handler sent, as the `fetch` fake sees it."""

    __test__ = False

    __slots__ = ("method", "url", "headers", "body", "timeout")

    def __init__(self, method: str, url: str, headers: Headers, body: bytes | None,
                 timeout: float | None) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.body or b"")

    def __repr__(self) -> str:
        return f"<FetchRequest {self.method} {self.url}>"


class TestResponse:
    """What the client got back: `status`, `headers` (case-insensitive,
    values decoded as Latin-1), `body` (bytes), `.text`, `.json()`.

    For a 500 caused by an exception in the handler, `exception` is that
    exception (and `error` its `TypeName: message`); for one the host's
    checks would have made (an invalid response header, say), `error`
    says why.
    """

    __test__ = False

    __slots__ = ("status", "headers", "raw_headers", "body", "exception", "error")

    def __init__(self, status: int, raw_headers: list[tuple[str, bytes]], body: bytes,
                 exception: BaseException | None = None, error: str | None = None) -> None:
        self.status = status
        self.raw_headers = raw_headers
        self.headers = Headers((name, value.decode("latin-1")) for name, value in raw_headers)
        self.body = body
        self.exception = exception
        self.error = error

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        """The body decoded with the declared charset (UTF-8 by default)."""
        return FetchResponse(self.status, self.headers, self.body, "").text

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.body)

    def __repr__(self) -> str:
        why = f" ({self.error})" if self.error else ""
        return f"<TestResponse {self.status}{why}>"


class TestClient:
    """Serve a handler's requests in this process, through pycage's own
    routing and conversion code, with faked capabilities (module docs).

    `handler` is what `pycage serve` is given: a `.py` file, or a directory
    whose entry module is `app.py`, `handler.py` or `main.py` (or `module`,
    e.g. "api.main"). A module object stands for the directory it was
    imported from, with it as the entry module: it is imported anew, not
    used. `module` may end in `:NAME` to serve the WSGI or ASGI app `NAME`
    (like `--module MODULE:APP`). The imported entry module is `.module`.

    `kv` maps each granted store name to its initial contents (values bytes,
    str as UTF-8, or int as ASCII decimal), or is a list of store names.
    `config` maps variable names to str values. `fetch` answers outbound
    requests. `fresh=True` re-imports the handler before every request.
    """

    __test__ = False

    def __init__(
        self,
        handler: str | os.PathLike[str] | types.ModuleType,
        *,
        module: str | None = None,
        kv: Mapping[str, Mapping[str, bytes | str | int]] | Iterable[str] | None = None,
        config: Mapping[str, str] | None = None,
        fetch: Callable[[FetchRequest], Any] | None = None,
        fresh: bool = False,
        raise_exceptions: bool = False,
        host: str = "testserver",
    ) -> None:
        self.kv: dict[str, dict[str, bytes]] = _kv_stores(kv)
        self.config: dict[str, str] = _variables(config)
        self.fetch = fetch
        self.fetches: list[FetchRequest] = []
        self.fresh = fresh
        self.raise_exceptions = raise_exceptions
        self.host = host
        self._locate(handler, module)
        self._bindings = _fake_bindings(self)
        self._kv_ops = 0
        self._modules: dict[str, types.ModuleType] = {}
        self._table: list[Any] = []
        self._ordered: tuple[Any, ...] | None = None
        self._app: Any = None
        self._served = False
        self.module: types.ModuleType = self._load()

    # -- the requests -------------------------------------------------------

    def get(self, path: str, *, query: QueryItems | None = None,
            headers: HeaderItems | None = None) -> TestResponse:
        return self.request("GET", path, query=query, headers=headers)

    def head(self, path: str, *, query: QueryItems | None = None,
             headers: HeaderItems | None = None) -> TestResponse:
        return self.request("HEAD", path, query=query, headers=headers)

    def options(self, path: str, *, query: QueryItems | None = None,
                headers: HeaderItems | None = None) -> TestResponse:
        return self.request("OPTIONS", path, query=query, headers=headers)

    def post(self, path: str, *, query: QueryItems | None = None,
             headers: HeaderItems | None = None, data: bytes | str | None = None,
             json: Any = None) -> TestResponse:
        return self.request("POST", path, query=query, headers=headers, data=data, json=json)

    def put(self, path: str, *, query: QueryItems | None = None,
            headers: HeaderItems | None = None, data: bytes | str | None = None,
            json: Any = None) -> TestResponse:
        return self.request("PUT", path, query=query, headers=headers, data=data, json=json)

    def patch(self, path: str, *, query: QueryItems | None = None,
              headers: HeaderItems | None = None, data: bytes | str | None = None,
              json: Any = None) -> TestResponse:
        return self.request("PATCH", path, query=query, headers=headers, data=data, json=json)

    def delete(self, path: str, *, query: QueryItems | None = None,
               headers: HeaderItems | None = None, data: bytes | str | None = None,
               json: Any = None) -> TestResponse:
        return self.request("DELETE", path, query=query, headers=headers, data=data, json=json)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: QueryItems | None = None,
        headers: HeaderItems | None = None,
        data: bytes | str | None = None,
        json: Any = None,
    ) -> TestResponse:
        """Send one request. `path` may carry a query ("/a?b=1"); `query`
        adds parameters (a dict, pairs or a string). `data` is the raw body;
        `json` is sent as JSON with its content type."""
        if not isinstance(method, str) or not _TOKEN.match(method):
            raise ValueError(f"invalid method {method!r}")
        raw_path, _, query_string = path.partition("?")
        if not raw_path.startswith("/"):
            raise ValueError(f"invalid path {path!r}: it must start with '/'")
        try:
            decoded = unquote(raw_path, errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"invalid path {path!r}: it must decode to UTF-8") from None
        if query:
            extra = query if isinstance(query, str) else urlencode(
                list(query.items()) if isinstance(query, Mapping) else list(query), doseq=True
            )
            query_string = f"{query_string}&{extra}" if query_string else extra
        if data is not None and json is not None:
            raise TypeError("give data or json, not both")
        body = b""
        if json is not None:
            body = _json.dumps(json).encode("utf-8")
        elif isinstance(data, str):
            body = data.encode("utf-8")
        elif data is not None:
            body = bytes(data)
        pairs = _request_headers(headers)
        names = {name for name, _ in pairs}
        if "host" not in names:
            pairs.insert(0, ("host", self.host.encode("latin-1")))
        if json is not None and "content-type" not in names:
            pairs.append(("content-type", b"application/json"))
        if body and "content-length" not in names:
            pairs.append(("content-length", str(len(body)).encode("ascii")))
        return self._dispatch(method, decoded, query_string, pairs, body)

    def _dispatch(self, method: str, path: str, query: str, pairs: list[tuple[str, bytes]],
                  body: bytes) -> TestResponse:
        with _LOCK:
            if self.fresh and self._served:
                self.module = self._load()
            self._served = True
            with self._scope(loading=False):
                # As the sandbox's WIT export builds it (pycage._glue.exports).
                headers = Headers((name, value.decode("latin-1")) for name, value in pairs)
                req = Request(method, path, query, headers, body)
                try:
                    status, response_headers, response_body = _convert.serve(req)
                except _convert.NoRoute as miss:
                    if miss.allowed is None:
                        return _host_error(404)
                    return _host_error(405, [("allow", ", ".join(miss.allowed).encode("latin-1"))])
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # SystemExit included, as in the sandbox
                    if self.raise_exceptions:
                        raise
                    traceback.print_exception(exc, file=sys.stderr)
                    return _host_error(500, exception=exc, error=_describe(exc))
        return _from_guest(status, response_headers, response_body)

    # -- importing the handler ----------------------------------------------

    def _locate(self, handler: Any, module: str | None) -> None:
        app_attribute = None
        if module is not None and ":" in module:
            module, _, app_attribute = module.partition(":")
            if not _IDENTIFIER.match(app_attribute):
                raise ValueError(f"invalid app name {app_attribute!r}")
            module = module or None
        if isinstance(handler, types.ModuleType):
            file = getattr(handler, "__file__", None)
            if not file:
                raise ValueError(f"module {handler.__name__!r} has no file to import anew")
            # Its directory, served as a directory handler with it as the
            # entry module (the directory of its top-level package).
            root = os.path.dirname(os.path.abspath(file))
            if os.path.basename(file) == "__init__.py":
                root = os.path.dirname(root)
            for _ in handler.__name__.split(".")[1:]:
                root = os.path.dirname(root)
            handler, module = root, module or handler.__name__
        path = os.path.abspath(os.fspath(handler))
        self.app_attribute = app_attribute
        if os.path.isfile(path):
            if not path.endswith(".py"):
                raise ValueError(f"{handler}: not a .py file")
            stem = os.path.basename(path)[:-3]
            if module is not None and module != stem:
                raise ValueError(f"{handler}: a file handler's module is its own name, {stem!r}")
            self.file = path
            self.root = os.path.dirname(path)
            self.entry_module = stem
        elif os.path.isdir(path):
            self.file = None
            self.root = path
            if module is None:
                for name in ENTRY_CANDIDATES:
                    if os.path.isfile(os.path.join(path, f"{name}.py")):
                        module = name
                        break
                else:
                    raise FileNotFoundError(
                        f"{handler}: no entry module (app.py, handler.py, main.py); "
                        "name one with module="
                    )
            self.entry_module = module
        else:
            raise FileNotFoundError(f"{handler}: no such file or directory")
        if not all(_IDENTIFIER.match(part) for part in self.entry_module.split(".")):
            raise ValueError(f"invalid module name {self.entry_module!r}")
        self._prefixes = tuple({os.path.join(self.root, ""), os.path.join(os.path.realpath(self.root), "")})
        self._files = {path, os.path.realpath(path)}
        vendor = os.path.join(self.root, "vendor")
        self._vendor = tuple({os.path.join(vendor, ""), os.path.join(os.path.realpath(vendor), "")})
        self._path = [] if self.file else [os.path.realpath(self.root)] + (
            [os.path.realpath(vendor)] if os.path.isdir(vendor) else []
        )

    def _owns(self, module: Any) -> bool:
        """Whether `module` is one of the handler's own (not vendored)."""
        name = getattr(module, "__name__", None)
        if not isinstance(name, str) or name == "pycage" or name.startswith("pycage."):
            return False
        file = getattr(module, "__file__", None)
        if self.file is not None:
            return file in self._files
        places = [file] if isinstance(file, str) else []
        if not places:
            path = getattr(module, "__path__", None)  # a namespace package
            try:
                places = [p for p in path if isinstance(p, str)] if path is not None else []
            except Exception:
                places = []
        return any(p.startswith(self._prefixes) and not p.startswith(self._vendor) for p in places)

    def _load(self) -> types.ModuleType:
        """Import the handler as the build does (pycage._glue.load)."""
        with _LOCK:
            self._modules = {}
            with self._scope(loading=True):
                module = self._import()
                routes = _router.table()
                app = None
                if self.app_attribute is not None:
                    app = _apps.named(module, self.app_attribute)
                elif not routes:
                    app = _apps.find(module)
                    if app is None:
                        raise NoRoutes(
                            f"{self.entry_module} declares no routes: decorate a function with "
                            "@route(...), or name a WSGI or ASGI application `app`"
                        )
                if len(routes) > MAX_ROUTES:
                    raise _router.RouteError(f"{len(routes)} routes, over the limit of {MAX_ROUTES}")
                self._table = _router._table
                self._ordered = _router._ordered
                self._app = app
            self._served = False
            return module

    def _import(self) -> types.ModuleType:
        import importlib
        import importlib.util

        name = self.entry_module
        if self.file is None:
            module = importlib.import_module(name)
            if not self._owns(module):
                raise ImportError(
                    f"the handler module name {name!r} is taken by another module "
                    f"({getattr(module, '__file__', None) or 'built in'}); rename the handler file"
                )
            return module
        if name in sys.stdlib_module_names:
            raise ImportError(
                f"the handler module name {name!r} is taken by the standard library; "
                "rename the handler file"
            )
        spec = importlib.util.spec_from_file_location(name, self.file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module

    @contextlib.contextmanager
    def _scope(self, *, loading: bool):
        """Swap this client's state into the process, and back out."""
        saved: tuple[Any, ...] = (
            _router._table, _router._ordered, _apps.APP, _capabilities.AVAILABLE, _aio.run,
            _fetch._send, list(sys.path), os.getcwd(),
        )
        shadowed: dict[str, Any] = {n: m for n, m in list(sys.modules.items()) if self._owns(m)}
        if self.file is None:
            entry = self.entry_module.split(".")[0]
            shadowed.update((n, m) for n, m in list(sys.modules.items())
                            if n == entry or n.startswith(entry + "."))
        else:
            shadowed.setdefault(self.entry_module, sys.modules.get(self.entry_module, _ABSENT))
        replaced: dict[str, Any] = {name: sys.modules.get(name, _ABSENT) for name in _BINDINGS}
        try:
            for name in shadowed:
                sys.modules.pop(name, None)
            sys.modules.update(self._modules)
            if loading:
                _router._table = []
                _router._ordered = None
                _apps.APP = None
                _capabilities.AVAILABLE = False
            else:
                _router._table = self._table
                _router._ordered = self._ordered
                _apps.APP = self._app
                _capabilities.AVAILABLE = True
                self._kv_ops = 0
                _fetch._send = self._send
            # Also while importing: they exist at build time too (where
            # pycage refuses to use them).
            sys.modules.update(self._bindings)
            _aio.run = _run_on_asyncio
            sys.path[:0] = self._path
            os.chdir(self.root)
            yield
        finally:
            if _router._table is self._table:
                self._ordered = _router._ordered
            (_router._table, _router._ordered, _apps.APP, _capabilities.AVAILABLE, _aio.run,
             _fetch._send, sys.path[:], cwd) = saved
            for name, m in list(sys.modules.items()):
                if self._owns(m) or (self.file is not None and name == self.entry_module):
                    self._modules[name] = m
                    del sys.modules[name]
            for table in (replaced, shadowed):
                for name, m in table.items():
                    if m is _ABSENT:
                        sys.modules.pop(name, None)
                    else:
                        sys.modules[name] = m
            with contextlib.suppress(OSError):
                os.chdir(cwd)

    # -- the fetch fake -----------------------------------------------------

    def _send(self, method: str, url: str, pairs: list[tuple[str, bytes]], body: bytes | None,
              timeout: float | None):
        """Stands in for `pycage._fetch._send` (the wasi:http part): the
        same checks of the URL, then the client's `fetch` function."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise _fetch.FetchError(f"{url}: only http and https URLs can be fetched")
        if not parts.hostname or "@" in parts.netloc:
            raise _fetch.FetchError(f"{url}: the URL needs a host (and no user or password)")
        if self.fetch is None:
            raise CapabilityError(
                f"outbound HTTP is not granted in this TestClient (fetching {url}); "
                "pass fetch=a_function to TestClient to answer it"
            )
        if body is not None and not any(k == "content-length" for k, _ in pairs):
            pairs = pairs + [("content-length", str(len(body)).encode())]
        request = FetchRequest(
            method, url, Headers((k, v.decode("latin-1")) for k, v in pairs), body, timeout
        )
        self.fetches.append(request)
        result = self.fetch(request)
        if isinstance(result, FetchResponse):
            return result
        status, headers, content = _convert.to_wire(result)
        return FetchResponse(
            status, Headers((k, bytes(v).decode("latin-1")) for k, v in headers), content, url
        )
        yield  # a generator, as the real one is (it never waits here)


# -- helpers -----------------------------------------------------------------


def _integer(value: bytes) -> int | None:
    """The int a stored value holds, as the host parses it (Rust's i64
    parse of the trimmed UTF-8 text), or None."""
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", text, flags=re.ASCII):
        return None
    number = int(text)
    return number if -(1 << 63) <= number < (1 << 63) else None


def _run_on_asyncio(awaitable: Any) -> Any:
    """Stands in for `pycage._aio.run`: a standard asyncio loop."""
    import asyncio

    async def main():
        return await awaitable

    return asyncio.run(main())


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _host_error(status: int, extra: list[tuple[str, bytes]] | None = None,
                exception: BaseException | None = None, error: str | None = None) -> TestResponse:
    """The host's own JSON error response (host/src/http.rs, for_error)."""
    body = _json.dumps({"error": _REASONS[status]}, separators=(",", ":")).encode()
    headers = [("content-type", b"application/json"), *(extra or [])]
    return TestResponse(status, headers, body, exception, error)


def _from_guest(status: int, headers: list[tuple[str, bytes]], body: bytes) -> TestResponse:
    """What the host makes of the handler's response (host/src/http.rs,
    from_guest): checked, framing headers dropped, names lower-cased."""
    if len(headers) > MAX_RESPONSE_HEADERS:
        return _host_error(500, error=f"{len(headers)} headers, over the limit of {MAX_RESPONSE_HEADERS}")
    head = sum(len(name) + len(value) + 4 for name, value in headers)
    if head > MAX_RESPONSE_HEAD_BYTES:
        return _host_error(500, error=f"{head} bytes of headers, over the limit of {MAX_RESPONSE_HEAD_BYTES}")
    if status in (204, 205, 304):
        body = b""
    checked = []
    for name, value in headers:
        if not _TOKEN.match(name):
            return _host_error(500, error=f"invalid header name {name!r}")
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
            return _host_error(500, error=f"invalid value for header `{name.lower()}`")
        if name.lower() not in _HOST_OWNED_HEADERS:
            checked.append((name.lower(), bytes(value)))
    return TestResponse(status, checked, bytes(body))


def _request_headers(headers: HeaderItems | None) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs = []
    for name, value in items:
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(f"invalid header name {name!r}")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            try:
                value = value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r} is not Latin-1 encodable: {value!r}") from None
        value = bytes(value)
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
            raise ValueError(f"invalid value for header {name!r}")
        pairs.append((name.lower(), value))
    return pairs


def _kv_stores(kv: Any) -> dict[str, dict[str, bytes]]:
    stores: dict[str, dict[str, bytes]] = {}
    if kv is None:
        return stores
    if isinstance(kv, str):
        raise TypeError("kv is a dict of store name -> contents, or a list of store names")
    if not isinstance(kv, Mapping):
        kv = {name: {} for name in kv}
    for name, contents in kv.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"a store name is a non-empty str, not {name!r}")
        store = {}
        for key, value in dict(contents or {}).items():
            if not isinstance(key, str):
                raise TypeError(f"store {name!r}: a key is a str, not {key!r}")
            if isinstance(value, bool):
                raise TypeError(f"store {name!r}: key {key!r} has a bool; give bytes, str or int")
            if isinstance(value, int):
                value = str(value)
            if isinstance(value, str):
                value = value.encode("utf-8")
            store[key] = bytes(value)
        stores[name] = store
    return stores


def _variables(config: Any) -> dict[str, str]:
    variables = dict(config or {})
    for name, value in variables.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"config holds str names and values, not {name!r}: {value!r}")
    return variables


# -- stand-ins for the host's interfaces --------------------------------------
#
# The modules componentize-py generates for the WIT imports (`wit_world.
# imports.kv_store`, `kv_atomics`, `config_store`) and its `Err`, with the
# behaviour of the host's implementation (host/src/capabilities/keyvalue,
# variables.rs). pycage.kv and pycage.config import them lazily, in each
# call; the client puts these in sys.modules while it imports the handler
# or serves a request, and takes them out again.


def _fake_bindings(client: TestClient) -> dict[str, types.ModuleType]:
    types_module = types.ModuleType("componentize_py_types")

    class Err(Exception):
        def __init__(self, value: Any) -> None:
            super().__init__(value)
            self.value = value

    types_module.Err = Err  # type: ignore[attr-defined]

    kv_store = types.ModuleType("wit_world.imports.kv_store")

    class Error_NoSuchStore:
        pass

    class Error_AccessDenied:
        pass

    class Error_Other:
        def __init__(self, value: str) -> None:
            self.value = value

    class KeyResponse:
        def __init__(self, keys: list[str], cursor: str | None) -> None:
            self.keys = keys
            self.cursor = cursor

    def operation() -> None:
        client._kv_ops += 1
        if client._kv_ops > KV_MAX_OPS:
            raise Err(Error_Other(f"more than {KV_MAX_OPS} key-value operations in one request"))

    def begin(key: str | None) -> None:
        if key is not None and len(key.encode("utf-8")) > KV_MAX_KEY_BYTES:
            raise Err(Error_Other(
                f"the key is {len(key.encode('utf-8'))} bytes, over the limit of {KV_MAX_KEY_BYTES}"
            ))
        operation()

    def check_value(value: bytes) -> None:
        if len(value) > KV_MAX_VALUE_BYTES:
            raise Err(Error_Other(
                f"the value is {len(value)} bytes, over the limit of {KV_MAX_VALUE_BYTES}"
            ))

    class Bucket:
        def __init__(self, name: str) -> None:
            self.name = name

        @property
        def data(self) -> dict[str, bytes]:
            return client.kv[self.name]

        def get(self, key: str) -> bytes | None:
            begin(key)
            return self.data.get(key)

        def set(self, key: str, value: bytes) -> None:
            begin(key)
            check_value(value)
            self.data[key] = bytes(value)

        def delete(self, key: str) -> None:
            begin(key)
            self.data.pop(key, None)

        def exists(self, key: str) -> bool:
            begin(key)
            return key in self.data

        def list_keys(self, cursor: str | None) -> KeyResponse:
            begin(None)
            keys = sorted(k for k in self.data if cursor is None or k > cursor)
            if len(keys) > KV_PAGE:
                keys = keys[:KV_PAGE]
                return KeyResponse(keys, keys[-1])
            return KeyResponse(keys, None)

    def open_store(identifier: str) -> Bucket:
        operation()
        if identifier not in client.kv:
            raise Err(Error_NoSuchStore())
        return Bucket(identifier)

    kv_store.Error_NoSuchStore = Error_NoSuchStore  # type: ignore[attr-defined]
    kv_store.Error_AccessDenied = Error_AccessDenied  # type: ignore[attr-defined]
    kv_store.Error_Other = Error_Other  # type: ignore[attr-defined]
    kv_store.KeyResponse = KeyResponse  # type: ignore[attr-defined]
    kv_store.Bucket = Bucket  # type: ignore[attr-defined]
    kv_store.open = open_store  # type: ignore[attr-defined]

    kv_atomics = types.ModuleType("wit_world.imports.kv_atomics")

    class CasError_StoreError:
        def __init__(self, value: Any) -> None:
            self.value = value

    class CasError_CasFailed:
        def __init__(self, value: Any) -> None:
            self.value = value

    class Cas:
        def __init__(self, bucket: Bucket, key: str, observed: bytes | None) -> None:
            self.bucket = bucket
            self.key = key
            self.observed = observed

        @staticmethod
        def new(bucket: Bucket, key: str) -> Cas:
            begin(key)
            return Cas(bucket, key, bucket.data.get(key))

        def current(self) -> bytes | None:
            return self.observed

    def increment(bucket: Bucket, key: str, delta: int) -> int:
        begin(key)
        old = bucket.data.get(key)
        start = 0 if old is None else _integer(old)
        if start is None:
            raise Err(Error_Other("the value is not an integer"))
        value = start + delta
        if not -(1 << 63) <= value < (1 << 63):
            raise Err(Error_Other("the increment overflows a 64-bit integer"))
        bucket.data[key] = str(value).encode("ascii")
        return value

    def swap(cas: Cas, value: bytes) -> None:
        try:
            operation()
            check_value(value)
        except Err as err:
            raise Err(CasError_StoreError(err.value)) from None
        current = cas.bucket.data.get(cas.key)
        if current != cas.observed:
            raise Err(CasError_CasFailed(Cas(cas.bucket, cas.key, current)))
        cas.bucket.data[cas.key] = bytes(value)

    kv_atomics.CasError_StoreError = CasError_StoreError  # type: ignore[attr-defined]
    kv_atomics.CasError_CasFailed = CasError_CasFailed  # type: ignore[attr-defined]
    kv_atomics.Cas = Cas  # type: ignore[attr-defined]
    kv_atomics.increment = increment  # type: ignore[attr-defined]
    kv_atomics.swap = swap  # type: ignore[attr-defined]

    config_store = types.ModuleType("wit_world.imports.config_store")
    config_store.get = lambda name: client.config.get(name)  # type: ignore[attr-defined]
    config_store.get_all = lambda: sorted(client.config.items())  # type: ignore[attr-defined]

    imports = types.ModuleType("wit_world.imports")
    imports.kv_store = kv_store  # type: ignore[attr-defined]
    imports.kv_atomics = kv_atomics  # type: ignore[attr-defined]
    imports.config_store = config_store  # type: ignore[attr-defined]
    imports.__path__ = []  # type: ignore[attr-defined]  # a package, for `from ... import`
    world = types.ModuleType("wit_world")
    world.imports = imports  # type: ignore[attr-defined]
    world.__path__ = []  # type: ignore[attr-defined]
    return {
        "componentize_py_types": types_module,
        "wit_world": world,
        "wit_world.imports": imports,
        "wit_world.imports.kv_store": kv_store,
        "wit_world.imports.kv_atomics": kv_atomics,
        "wit_world.imports.config_store": config_store,
    }
