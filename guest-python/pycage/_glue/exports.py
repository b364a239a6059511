"""The WIT exports at request time: `Handler.routes` and `Handler.dispatch`.

No exception may escape an export (it would abort the instance), so every
path below ends in a WIT value.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import handler as wit

from pycage import _aio, _apps, _router
from pycage._convert import to_wire
from pycage._http import Headers, HTTPError, Request, Response

from .load import describe, format_traceback

# The route table as the host receives it, set once the handler is loaded.
ROUTES = []

# What plain handlers return, told apart from an awaitable by type alone:
# `inspect.isawaitable` would ask collections.abc.Awaitable, whose checks
# write to its caches in every request.
_PLAIN = (dict, list, str, bytes, tuple, type(None), Response)


def _exception_error(exc):
    return Err(wit.DispatchError_HandlerException(
        wit.ExceptionInfo(message=describe(exc), traceback=format_traceback(exc))
    ))


def call(request):
    headers = Headers((h.name, bytes(h.value).decode("latin-1")) for h in request.headers)
    req = Request(request.method, request.path, request.query, headers, request.body)
    if _apps.APP is not None:
        return response(request.method, _apps.call(_apps.APP, req))
    try:
        route, params = _router.match(request.method, request.path)
    except _router.NotFound:
        raise Err(wit.DispatchError_NotFound())
    except _router.MethodNotAllowed as exc:
        raise Err(wit.DispatchError_MethodNotAllowed(list(exc.allowed)))
    req.path_params = params
    try:
        result = route.func(req, **params) if route.wants_request else route.func(**params)
        if type(result) not in _PLAIN and hasattr(type(result), "__await__"):
            # An `async def` handler: run it on a fresh event loop.
            result = _aio.run(result)
    except HTTPError as exc:
        result = exc.to_response()
    except BaseExceptionGroup as group:
        # An HTTPError raised in a TaskGroup arrives wrapped: answer with
        # it when the group holds nothing else.
        first = _only_http_errors(group)
        if first is None:
            raise
        result = first.to_response()
    return response(request.method, result)


def _only_http_errors(group):
    """The first HTTPError of `group` if every exception in it is one."""
    first = None
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _only_http_errors(exc)
        if not isinstance(exc, HTTPError):
            return None
        first = first or exc
    return first


def response(method, result):
    if type(result) is _apps.Wire:
        status, response_headers, body = result.status, result.headers, result.body
        if not 200 <= status <= 599:
            raise ValueError(f"the app answered with status {status}, not one in 200..599")
    else:
        status, response_headers, body = to_wire(result)
    if method == "HEAD":
        body = b""
    return wit.Response(
        status=status,
        headers=[wit.Header(name=name, value=value) for name, value in response_headers],
        body=body,
    )


def wit_routes(routes):
    if _apps.APP is not None:
        app = _apps.APP
        return [wit.Route(pattern="/{path:path}", methods=["*"], handler=f"{app.kind} app {app.name}")]
    return [wit.Route(pattern=r.pattern, methods=list(r.methods), handler=r.name) for r in routes]


class Handler(exports.Handler):
    def routes(self):
        return ROUTES

    def dispatch(self, request):
        try:
            return call(request)
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
