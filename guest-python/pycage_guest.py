"""WIT export glue: the only Python code the pycage host calls.

Imported once, at build time, inside componentize-py's pre-initialisation:
it imports the handler's entry module (so the handler and everything it
imports land in the snapshot), checks the route table and writes a build
report the host reads. At request time the host calls `Handler.routes` or
`Handler.dispatch` on a fresh instance of that snapshot.

No exception may escape an export (it would abort the instance), so every
path below ends in a WIT value.
"""

import importlib
import io
import json
import os
import sys
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import handler as wit

import pycage_build_config as config
from pycage import _router
from pycage._convert import to_wire
from pycage._http import Headers, HTTPError, Request

# Output a handler prints while being imported at build time is captured up
# to this many characters and shown by the host (the rest is dropped).
_BUILD_OUTPUT_LIMIT = 64 * 1024
_TRACEBACK_LIMIT = 64 * 1024
# The host refuses a larger route table (host/src/runtime.rs, MAX_ROUTES).
_MAX_ROUTES = 4096


class _NoRoutes(Exception):
    pass


class _CappedText(io.TextIOBase):
    def __init__(self, limit):
        self.limit = limit
        self.parts = []
        self.size = 0
        self.truncated = False

    def writable(self):
        return True

    def write(self, text):
        room = self.limit - self.size
        if len(text) > room:
            self.truncated = True
            text = text[: max(room, 0)]
        self.parts.append(text)
        self.size += len(text)
        return len(text)

    def getvalue(self):
        return "".join(self.parts)


def _describe(exc):
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text}" if text else name


def _format_traceback(exc):
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException:  # a broken traceback module must not abort the instance
        text = _describe(exc) + "\n"
    if len(text) > _TRACEBACK_LIMIT:
        text = "...(truncated)...\n" + text[-_TRACEBACK_LIMIT:]
    return text


def _handler_location(exc):
    """(file, line) of the innermost frame inside the handler's own tree."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return exc.filename, exc.lineno
    location = (None, None)
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(config.APP_GUEST_DIR + "/"):
            location = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return location


def _write_report(report):
    with open(config.REPORT_PATH, "w", encoding="utf-8") as f:
        json.dump(report, f)


def _precompile(root):
    """Write bytecode for every module in the handler tree.

    The tree is read-only at request time, so a module first imported then
    would otherwise be compiled from source on every request. The tree never
    changes after the build, hence unchecked-hash .pyc files.
    """
    import py_compile

    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                try:
                    py_compile.compile(
                        os.path.join(directory, name),
                        doraise=True,
                        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                    )
                except (py_compile.PyCompileError, OSError):
                    pass  # an unimportable file fails with a clear error if it is imported


def _extend_path():
    """Put the handler's dependencies on sys.path, as `site` would.

    The layers (/2, /3, ...) are already on it, after the standard library
    and the handler; `site.addsitedir` runs their .pth files (adding listed
    directories that exist, executing `import` lines). vendor/ goes right
    after the handler's own directory.
    """
    import site

    if os.path.isdir(config.VENDOR_DIR):
        try:
            position = sys.path.index(config.APP_GUEST_DIR) + 1
        except ValueError:
            position = len(sys.path)
        sys.path.insert(position, config.VENDOR_DIR)
        site.addsitedir(config.VENDOR_DIR)
    for layer in config.LAYER_DIRS:
        site.addsitedir(layer)


def _load():
    captured = _CappedText(_BUILD_OUTPUT_LIMIT)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = captured
    try:
        # The working directory is the handler's own tree, from its import
        # on: set here, it is part of the snapshot, so requests need no
        # chdir of their own (which cost ~17 µs: it made libc fetch the
        # preopens and stat the directory in every instance). It is the
        # mount the handler was imported from; /app holds the same files.
        os.chdir(config.APP_GUEST_DIR)
        _extend_path()
        module = importlib.import_module(config.ENTRY_MODULE)
        if not (getattr(module, "__file__", None) or "").startswith(config.APP_GUEST_DIR + "/"):
            raise ImportError(
                f"the handler module name {config.ENTRY_MODULE!r} is taken by the standard "
                "library; rename the handler file"
            )
        routes = _router.table()
        if not routes:
            raise _NoRoutes(
                f"{config.ENTRY_MODULE} declares no routes: decorate a function with @route(...)"
            )
        if len(routes) > _MAX_ROUTES:
            raise _router.RouteError(
                f"{len(routes)} routes, over the limit of {_MAX_ROUTES}"
            )
    except BaseException as exc:
        sys.stdout, sys.stderr = saved
        file, line = _handler_location(exc)
        if isinstance(exc, _NoRoutes):
            kind = "no-routes"
        elif isinstance(exc, SyntaxError):
            kind = "syntax-error"
        elif isinstance(exc, _router.RouteError):
            kind = "route-error"
        else:
            kind = "import-error"
        _write_report({
            "ok": False,
            "kind": kind,
            "message": exc.msg if isinstance(exc, SyntaxError) else _describe(exc),
            "exception": type(exc).__name__,
            "file": file,
            "line": line,
            "traceback": _format_traceback(exc),
            "output": captured.getvalue(),
            "output_truncated": captured.truncated,
        })
        raise
    sys.stdout, sys.stderr = saved
    for tree in (config.APP_GUEST_DIR, *config.LAYER_DIRS):
        _precompile(tree)
    _write_report({
        "ok": True,
        "routes": [
            {"pattern": r.pattern, "methods": list(r.methods), "handler": r.name} for r in routes
        ],
        "output": captured.getvalue(),
        "output_truncated": captured.truncated,
    })
    return [wit.Route(pattern=r.pattern, methods=list(r.methods), handler=r.name) for r in routes]


def _install_fresh_seed():
    """Make the per-instance reseed of `random` cheap.

    componentize-py's runtime calls `random.seed()` once in every new
    instance, before the first export call, so that instances do not share
    the state baked into the snapshot. It looks `random.seed` up after this
    module is imported, so it calls this wrapper. CPython's own seed() with
    no argument reads 2,496 bytes from the OS (ten host calls here); 32
    bytes from the same CSPRNG seed MT19937 just as unpredictably. An
    explicit seed, `random.seed(x)`, behaves exactly as before.
    """
    import random

    seed = random.seed

    def fresh_seed(a=None, version=2):
        if a is None:
            a = int.from_bytes(os.urandom(32), "little")
        return seed(a, version)

    fresh_seed.__doc__ = seed.__doc__
    random.seed = fresh_seed


def _list_snapshot_objects():
    """Write the address and type of every live object for the host.

    The host makes these objects immortal in the memory image (see
    host/src/immortal.rs): CPython then skips their reference counts, so a
    request that only reads the handler's functions, modules and constants
    no longer writes the pages they live on, and each instance has that many
    fewer pages to reset. The objects are returned to be kept alive, so
    every listed address still holds its object when the snapshot is taken.
    """
    import gc

    gc.collect()
    pending = gc.get_objects()
    seen = {}
    scratch = {id(pending), id(seen)}
    while pending:
        obj = pending.pop()
        key = id(obj)
        if key in seen or key in scratch:
            continue
        seen[key] = obj
        pending.extend(gc.get_referents(obj))
    is_immortal = getattr(sys, "_is_immortal", lambda obj: False)
    kept = tuple(obj for obj in seen.values() if not is_immortal(obj))
    del seen, pending
    # Plain bytes, not the array module: importing that registers an ABC,
    # which would invalidate every ABC cache the warm-up filled.
    listing = bytearray()
    for obj in kept:
        listing += id(obj).to_bytes(4, "little") + id(type(obj)).to_bytes(4, "little")
    with open(config.OBJECTS_PATH, "wb") as f:
        f.write(listing)
    return kept


# Filling stops after this many blocks in a row (16 KiB) came from the top
# of the heap, above every object; it never takes more than _MAX_FILLERS
# (64 MiB), should the top never be recognised.
_TOP_RUN = 1024
_MAX_FILLERS = 1 << 22


def _fill_free_memory(highest):
    """Take every free block of the heap, so requests allocate from its top.

    Importing modules at build time leaves thousands of freed blocks
    scattered over the ~13 MiB heap; a request's new objects would land in
    them, one here, one there, each writing a page of the snapshot that its
    reset then copies back. Once none is left, the allocator (dlmalloc: this
    CPython is built without pymalloc) serves every request from the top of
    the heap, where its objects sit together on a few pages: a hello
    request writes 75 pages instead of 111 (`bench --quick`).

    An `object()` is the smallest block (16 bytes), so allocating them takes
    every free block of any size: dlmalloc prefers any free block to the
    top. When blocks come out consecutively above every object that existed
    before, for 16 KiB, they come from the top, and filling stops. CPython's own
    free lists (floats, tuples, lists, dicts) are emptied first, for the
    same reason. The fillers are never touched again.
    """
    emptied = []
    for i in range(100):
        emptied.append([])
        emptied.append({})
        emptied.append(i + 0.5)
        for n in range(1, 21):
            emptied.append(tuple([None] * n))
    fillers = []
    consecutive = 0
    last = 0
    while consecutive < _TOP_RUN and len(fillers) < _MAX_FILLERS:
        obj = object()
        fillers.append(obj)
        here = id(obj)
        consecutive = consecutive + 1 if here > highest and here == last + 16 else 0
        last = here
    return emptied, fillers


def _prepare_snapshot():
    """The last build step: immortal objects, no free blocks, frozen GC."""
    import gc

    kept = _list_snapshot_objects()
    filled = _fill_free_memory(max(map(id, kept), default=0))
    # None of this is garbage: keep the collector from walking it (and
    # writing its headers) in a request.
    gc.freeze()
    return kept, filled


def _exception_error(exc):
    return Err(wit.DispatchError_HandlerException(
        wit.ExceptionInfo(message=_describe(exc), traceback=_format_traceback(exc))
    ))


def _call(request):
    headers = Headers((h.name, bytes(h.value).decode("latin-1")) for h in request.headers)
    req = Request(request.method, request.path, request.query, headers, request.body)
    try:
        route, params = _router.match(request.method, request.path)
    except _router.NotFound:
        raise Err(wit.DispatchError_NotFound())
    except _router.MethodNotAllowed as exc:
        raise Err(wit.DispatchError_MethodNotAllowed(list(exc.allowed)))
    req.path_params = params
    try:
        result = route.func(req, **params) if route.wants_request else route.func(**params)
    except HTTPError as exc:
        result = exc.to_response()
    return _response(request.method, result)


def _response(method, result):
    status, response_headers, body = to_wire(result)
    if method == "HEAD":
        body = b""
    return wit.Response(
        status=status,
        headers=[wit.Header(name=name, value=value) for name, value in response_headers],
        body=body,
    )


class Handler(exports.Handler):
    def routes(self):
        return _ROUTES

    def dispatch(self, request):
        try:
            return _call(request)
        except Err:
            raise
        except BaseException as exc:  # SystemExit and KeyboardInterrupt included
            try:
                error = _exception_error(exc)
            except BaseException:
                error = Err(wit.DispatchError_HandlerException(
                    wit.ExceptionInfo(message="exception while reporting an exception", traceback="")
                ))
            raise error


# Enough runs for CPython's adaptive interpreter to specialise the request
# path's bytecode, so that the snapshot holds it specialised (specialising
# rewrites the bytecode: done per request, it writes the code's pages).
_WARM_RUNS = 20

# No route can be registered for this method (methods are upper case), so
# warming the dispatch path never runs handler code.
_WARM_METHOD = "pycage-warm-up"


def _warm_request_path(handler):
    """Run the glue's and the framework's request path at build time.

    Caches filled on first use (ABC subclass checks behind isinstance,
    parsed query strings, the JSON encoder) then live in the snapshot
    instead of being rebuilt by every request's fresh instance.
    """
    request = wit.Request(
        method=_WARM_METHOD,
        path="/",
        query="a=1&b=2",
        headers=[wit.Header(name="content-type", value=b"application/json")],
        body=b"{}",
    )
    try:
        handler.dispatch(request)
    except Err:
        pass
    headers = Headers([("content-type", "application/json")])
    req = Request("GET", "/", "a=1&b=2", headers, b"{}")
    _ = req.query, req.text, req.json(), req.content_type
    for value in ({"k": [1]}, ["x"], "text", b"bytes", None, ({}, 201), HTTPError(404).to_response()):
        _response("GET", value)
    _response("HEAD", "text")


# Build time, in this order: the seed wrapper before anything imports
# random's functions, the handler, the warm-up, then the snapshot's objects
# (last: everything above allocates).
_install_fresh_seed()
_ROUTES = _load()
for _ in range(_WARM_RUNS):
    _warm_request_path(Handler())
_SNAPSHOT = _prepare_snapshot()
