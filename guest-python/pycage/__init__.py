"""pycage: write HTTP handlers that run in a fresh sandboxed interpreter per request.

    from pycage import route, Request

    @route("/hello/{name}")
    def hello(request: Request, name: str):
        return {"hello": name}

Every request runs in a brand-new interpreter: module globals, caches and
monkey-patches made while handling one request are gone by the next. The
handler's own files are readable (read-only) under /app; nothing else of the
host is visible.
"""

from ._http import Headers, HTTPError, QueryParams, Request, Response
from ._router import RouteError, route

__all__ = ["route", "Request", "Response", "Headers", "QueryParams", "HTTPError", "RouteError"]
__version__ = "0.1.0"

# Where the handler directory is mounted inside the sandbox.
APP_DIR = "/app"
