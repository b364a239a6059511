"""The route table: `@route` registration and request matching."""

import inspect
import re

# For type checkers only: annotations that name these are strings, never
# evaluated, so that the sandbox does not import `typing` for them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["route", "Route", "RouteError", "table", "match", "NotFound", "MethodNotAllowed"]

_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(str|int|float|path))?\}")
_CONVERTERS = {"str": str, "int": int, "float": float, "path": str}
_ANNOTATED = {int: "int", float: "float"}
_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]*$")

_table: "list[Route]" = []
# `table()`'s answer, computed once after the last registration (at build
# time, so every request's instance has it in the snapshot).
_ordered: "tuple[Route, ...] | None" = None


class RouteError(ValueError):
    """A `@route` declaration that cannot work (reported at build time)."""


class NotFound(Exception):
    pass


class MethodNotAllowed(Exception):
    def __init__(self, allowed):
        super().__init__(allowed)
        self.allowed = allowed


class Route:
    __slots__ = ("pattern", "methods", "func", "name", "params", "regex", "wants_request")

    def __init__(self, pattern, methods, func):
        self.pattern = pattern
        self.methods = methods
        self.func = func
        self.name = f"{func.__module__}.{func.__qualname__}"
        self.params = {}
        self.regex = self._compile(pattern, func)
        self.wants_request = self._wants_request(func)

    @property
    def is_static(self):
        return not self.params

    def _compile(self, pattern, func):
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):
            signature = None
        regex = []
        literals = []
        pos = 0
        for m in _SEGMENT.finditer(pattern):
            literals.append(pattern[pos : m.start()])
            regex.append(re.escape(literals[-1]))
            name, kind = m.group(1), m.group(2)
            if name in self.params:
                raise RouteError(f"route {pattern!r}: parameter {{{name}}} appears twice")
            if kind is None and signature is not None and name in signature.parameters:
                kind = _ANNOTATED.get(signature.parameters[name].annotation, "str")
            kind = kind or "str"
            self.params[name] = _CONVERTERS[kind]
            regex.append(f"(?P<{name}>.+)" if kind == "path" else f"(?P<{name}>[^/]+)")
            pos = m.end()
        literals.append(pattern[pos:])
        if any("{" in part or "}" in part for part in literals):
            raise RouteError(
                f"route {pattern!r}: malformed parameter; use {{name}} or {{name:int|float|str|path}}"
            )
        regex.append(re.escape(literals[-1]))
        if signature is not None:
            accepts_kwargs = any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
            )
            for name in self.params:
                param = signature.parameters.get(name)
                if not accepts_kwargs and (
                    param is None or param.kind is inspect.Parameter.POSITIONAL_ONLY
                ):
                    raise RouteError(
                        f"route {pattern!r}: {self.name}() has no keyword parameter {name!r}"
                    )
        return re.compile("".join(regex) + r"\Z")

    def _wants_request(self, func):
        """True when the function takes a positional argument besides path params."""
        try:
            parameters = inspect.signature(func).parameters.values()
        except (TypeError, ValueError):
            return True
        for param in parameters:
            if param.name in self.params:
                continue
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD, param.VAR_POSITIONAL):
                return True
        return False

    def match_path(self, path):
        """The converted path parameters if `path` matches, else None."""
        m = self.regex.match(path)
        if m is None:
            return None
        values = {}
        for name, convert in self.params.items():
            try:
                values[name] = convert(m.group(name))
            except ValueError:
                return None
        return values


def route(path: str, methods: "str | Iterable[str]" = ("GET",)) -> "Callable[[_F], _F]":
    """Register the decorated function for `path` and `methods`.

    `path` is a pattern such as "/users/{id}". A `{name}` segment matches
    one path segment and is passed to the function as the keyword argument
    `name`: a str, or an int / float when the parameter is annotated so (or
    written `{name:int}`). `{name:path}` matches the rest of the path,
    slashes included. The function receives the `Request` first when it
    has a positional parameter that is not a path parameter.

    Static routes are tried before parameterised ones; otherwise routes are
    tried in the order they were declared. A GET route also answers HEAD.
    """
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(path, str) or not path.startswith("/"):
        raise RouteError(f"route path must be a str starting with '/', got {path!r}")
    normalised = []
    for method in methods:
        if not isinstance(method, str) or not _METHOD.match(method.upper()):
            raise RouteError(f"route {path!r}: invalid method {method!r}")
        if method.upper() not in normalised:
            normalised.append(method.upper())
    if not normalised:
        raise RouteError(f"route {path!r}: no methods given")

    def register(func: "_F") -> "_F":
        global _ordered
        if not callable(func):
            raise RouteError(f"route {path!r}: {func!r} is not callable")
        _table.append(Route(path, tuple(normalised), func))
        _ordered = None
        return func

    return register


def table():
    """Routes in matching order: static ones first, then by declaration."""
    global _ordered
    if _ordered is None or len(_ordered) != len(_table):
        _ordered = tuple(r for r in _table if r.is_static) + tuple(
            r for r in _table if not r.is_static
        )
    return _ordered


def match(method, path):
    """(route, params) for a request, or raise NotFound / MethodNotAllowed."""
    allowed = []
    for candidate in table():
        params = candidate.match_path(path)
        if params is None:
            continue
        if method in candidate.methods or (method == "HEAD" and "GET" in candidate.methods):
            return candidate, params
        allowed.extend(m for m in candidate.methods if m not in allowed)
    if not allowed:
        raise NotFound()
    if "GET" in allowed and "HEAD" not in allowed:
        allowed.append("HEAD")
    raise MethodNotAllowed(allowed)
