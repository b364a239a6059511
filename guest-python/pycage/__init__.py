"""pycage: write HTTP handlers that run in a fresh sandboxed interpreter per request.

    from pycage import route, Request, kv, fetch, config

    @route("/hello/{name}")
    def hello(request: Request, name: str):
        return {"hello": name}

    @route("/visits/{page}", methods=["POST"])
    def visit(request: Request, page: str):
        n = kv.open("default").increment(f"visits:{page}")   # a granted store
        return {"page": page, "visits": n}

Every request runs in a brand-new interpreter: module globals, caches and
monkey-patches made while handling one request are gone by the next. The
handler's own files are readable (read-only) under /app; nothing else of the
host is visible.
"""

from . import config, kv
from ._capabilities import CapabilityError
from ._fetch import FetchError, FetchResponse, fetch, fetch_async
from ._http import Headers, HTTPError, QueryParams, Request, Response
from ._router import RouteError, route
from .kv import KeyValueError

__all__ = [
    "route", "Request", "Response", "Headers", "QueryParams", "HTTPError", "RouteError",
    "kv", "KeyValueError", "config", "fetch", "fetch_async", "FetchResponse", "FetchError", "CapabilityError",
]
__version__ = "0.1.0"

# Where the handler directory is mounted inside the sandbox.
APP_DIR = "/app"
