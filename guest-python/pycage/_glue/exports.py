"""The WIT exports at request time: `Handler.routes` and `Handler.dispatch`.

No exception may escape an export (it would abort the instance), so every
path below ends in a WIT value.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import handler as wit

from pycage import _apps
from pycage._convert import NoRoute, serve, wire
from pycage._http import Headers, Request

from .load import describe, format_traceback

# The route table as the host receives it, set once the handler is loaded.
ROUTES = []


def _exception_error(exc):
    return Err(wit.DispatchError_HandlerException(
        wit.ExceptionInfo(message=describe(exc), traceback=format_traceback(exc))
    ))


def call(request):
    headers = Headers((h.name, bytes(h.value).decode("latin-1")) for h in request.headers)
    req = Request(request.method, request.path, request.query, headers, request.body)
    # The routing, the handler's call and the conversion are shared with
    # pycage.testing (`pycage._convert.serve`).
    try:
        status, response_headers, body = serve(req)
    except NoRoute as miss:
        if miss.allowed is None:
            raise Err(wit.DispatchError_NotFound())
        raise Err(wit.DispatchError_MethodNotAllowed(list(miss.allowed)))
    return _wit_response(status, response_headers, body)


def response(method, result):
    return _wit_response(*wire(method, result))


def _wit_response(status, response_headers, body):
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
