"""Running the request path at build time, so that the snapshot holds it
warmed: caches filled on first use (ABC subclass checks behind isinstance,
parsed query strings, the JSON encoder) and bytecode the adaptive
interpreter has specialised, instead of every request's fresh instance
doing it again.
"""

from pycage import _apps
from pycage._convert import wire
from pycage._http import Headers, HTTPError, Request

# Enough runs for CPython's adaptive interpreter to specialise the request
# path's bytecode, so that the snapshot holds it specialised (specialising
# rewrites the bytecode: done per request, it writes the code's pages).
RUNS = 20

# No route can be registered for this method (methods are upper case), so
# warming the dispatch path never runs handler code.
_WARM_METHOD = "pycage-warm-up"


def _once(handler):
    from componentize_py_types import Err
    from wit_world.exports import handler as wit

    from . import exports

    request = wit.Request(
        method=_WARM_METHOD,
        path="/",
        query="a=1&b=2",
        headers=[wit.Header(name="content-type", value=b"application/json")],
        body=b"{}",
    )
    # An app would run its own code for this request: never at build time.
    if _apps.APP is None:
        try:
            handler.dispatch(request)
        except Err:
            pass
    headers = Headers([("content-type", "application/json")])
    req = Request("GET", "/", "a=1&b=2", headers, b"{}")
    _ = req.query, req.text, req.json(), req.content_type
    for value in ({"k": [1]}, ["x"], "text", b"bytes", None, ({}, 201), HTTPError(404).to_response()):
        exports.response("GET", value)
    exports.response("HEAD", "text")


def warm(routes):
    """Warm pycage's own export (`pycage_guest`)."""
    from . import exports

    for _ in range(RUNS):
        _once(exports.Handler())
    warm_async_if_used(routes)


def warm_async_if_used(routes):
    """Put asyncio and pycage's event loop in the snapshot, warmed, if the
    handler awaits anything (shared with the wasi:http export's glue)."""
    if _uses_async(routes):
        _warm_async()


def _uses_async(routes):
    """Whether the handler awaits anything: an `async def` route, or asyncio
    imported by its modules. Only then is asyncio (~40 modules) put in the
    snapshot, with pycage's event loop installed."""
    import sys

    if _apps.APP is not None and _apps.APP.kind == "asgi":
        return True
    return "asyncio" in sys.modules or any(_apps.is_async_callable(r.func) for r in routes)


def _warm_async():
    """Install the event loop and run what an async request does on it."""
    import asyncio

    from pycage import _aio

    async def sample():
        await asyncio.sleep(0)
        await asyncio.gather(asyncio.sleep(0), asyncio.sleep(0))
        await asyncio.wait_for(asyncio.sleep(0), timeout=1)
        async with asyncio.timeout(1):
            await asyncio.sleep(0)
        return {"ok": True}

    for _ in range(RUNS):
        wire("GET", _aio.run(sample()))
