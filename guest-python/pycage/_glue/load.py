"""Importing the handler at build time, and the report the host reads.

The report is a JSON file in the framework mount (`pycage_build_config.
REPORT_PATH`): `ok`, and for a failure the `kind` (`syntax-error`,
`import-error`, `route-error`, `no-routes`), `message`, `file`, `line` and
`traceback`; always the `output` the handler printed while being imported
(bounded, with `output_truncated`). The host reads it without following
links and bounded, and escapes every text in it.
"""

import importlib
import io
import json
import os
import sys
import traceback

import pycage_build_config as config
from pycage import _apps, _router

# Output a handler prints while being imported at build time is captured up
# to this many characters and shown by the host (the rest is dropped).
BUILD_OUTPUT_LIMIT = 64 * 1024
TRACEBACK_LIMIT = 64 * 1024
# The host refuses a larger route table (host/src/runtime/handler.rs, MAX_ROUTES).
MAX_ROUTES = 4096


class NoRoutes(Exception):
    pass


class CappedText(io.TextIOBase):
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


def describe(exc):
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text}" if text else name


def format_traceback(exc):
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException:  # a broken traceback module must not abort the instance
        text = describe(exc) + "\n"
    if len(text) > TRACEBACK_LIMIT:
        text = "...(truncated)...\n" + text[-TRACEBACK_LIMIT:]
    return text


def _handler_location(exc):
    """(file, line) of the innermost frame inside the handler's own tree."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return exc.filename, exc.lineno
    location = (None, None)
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(config.IMPORT_DIR + "/"):
            location = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return location


def _write_report(report):
    with open(config.REPORT_PATH, "w", encoding="utf-8") as f:
        json.dump(report, f)


def _precompile(root):
    """Write bytecode for every module in a tree.

    The tree is read-only at request time, so a module first imported then
    would otherwise be compiled from source on every request. The tree never
    changes after the build, hence unchecked-hash .pyc files. The host keeps
    the one for each .py file it staged, nothing else the build wrote.
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
            position = sys.path.index(config.IMPORT_DIR) + 1
        except ValueError:
            position = len(sys.path)
        sys.path.insert(position, config.VENDOR_DIR)
        site.addsitedir(config.VENDOR_DIR)
    for layer in config.LAYER_DIRS:
        site.addsitedir(layer)


def _kind(exc):
    if isinstance(exc, NoRoutes):
        return "no-routes"
    if isinstance(exc, SyntaxError):
        return "syntax-error"
    if isinstance(exc, _router.RouteError):
        return "route-error"
    return "import-error"


def load():
    """Import the handler's entry module and return its route table; on
    failure, report why and re-raise (the build then fails)."""
    captured = CappedText(BUILD_OUTPUT_LIMIT)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = captured
    try:
        # The working directory is the handler's own tree, from its import
        # on: set here, it is part of the snapshot, so requests need no
        # chdir of their own (which cost ~17 µs: it made libc fetch the
        # preopens and stat the directory in every instance). It is the
        # mount the handler was imported from; /app holds the same files.
        os.chdir(config.IMPORT_DIR)
        _extend_path()
        module = importlib.import_module(config.ENTRY_MODULE)
        if not (getattr(module, "__file__", None) or "").startswith(config.IMPORT_DIR + "/"):
            raise ImportError(
                f"the handler module name {config.ENTRY_MODULE!r} is taken by the standard "
                "library; rename the handler file"
            )
        routes = _router.table()
        if config.APP_ATTRIBUTE is not None:
            _apps.APP = _apps.named(module, config.APP_ATTRIBUTE)
        elif not routes:
            _apps.APP = _apps.find(module)
            if _apps.APP is None:
                raise NoRoutes(
                    f"{config.ENTRY_MODULE} declares no routes: decorate a function with "
                    "@route(...), or name a WSGI or ASGI application `app`"
                )
        if len(routes) > MAX_ROUTES:
            raise _router.RouteError(f"{len(routes)} routes, over the limit of {MAX_ROUTES}")
    except BaseException as exc:
        sys.stdout, sys.stderr = saved
        file, line = _handler_location(exc)
        _write_report({
            "ok": False,
            "kind": _kind(exc),
            "message": exc.msg if isinstance(exc, SyntaxError) else describe(exc),
            "file": file,
            "line": line,
            "traceback": format_traceback(exc),
            "output": captured.getvalue(),
            "output_truncated": captured.truncated,
        })
        raise
    sys.stdout, sys.stderr = saved
    for tree in (config.IMPORT_DIR, *config.LAYER_DIRS):
        _precompile(tree)
    _write_report({
        "ok": True,
        "output": captured.getvalue(),
        "output_truncated": captured.truncated,
    })
    return routes
