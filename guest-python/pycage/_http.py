"""Request, Response and the multi-valued mappings they use."""

import json
from collections.abc import Mapping
from urllib.parse import parse_qsl

# For type checkers only: annotations that name these are strings, never
# evaluated, so that the sandbox does not import `typing` for them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import ItemsView, Iterable, Iterator
    from typing import Any, Union

    HeaderItems = Union[Mapping[str, str], Iterable[tuple[str, str]]]
    HeaderValue = Union[str, bytes, int]
    ResponseHeaders = Union[Mapping[str, HeaderValue], Iterable[tuple[str, HeaderValue]]]
    ResponseBody = Union[bytes, bytearray, memoryview, str, dict[str, Any], list[Any], None]

__all__ = ["Headers", "QueryParams", "Request", "Response", "HTTPError"]


class _MultiMapping(Mapping[str, str]):
    """An immutable mapping that keeps every value of a repeated key.

    `m[key]` and `m.get(key)` give the first value, `m.getlist(key)` all of
    them, in order. Subclasses decide how keys compare (`_fold`).
    """

    __slots__ = ("_items", "_index")

    _index: "dict[str, list[str]]"

    def __init__(self, items: "HeaderItems" = ()) -> None:
        if isinstance(items, Mapping):
            items = items.items()
        self._items = [(str(k), str(v)) for k, v in items]
        self._index = {}
        for key, value in self._items:
            self._index.setdefault(self._fold(key), []).append(value)

    @staticmethod
    def _fold(key: str) -> str:
        return key

    def __getitem__(self, key: str) -> str:
        return self._index[self._fold(key)][0]

    def __iter__(self) -> "Iterator[str]":
        seen = set()
        for key, _ in self._items:
            folded = self._fold(key)
            if folded not in seen:
                seen.add(folded)
                yield key

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._fold(key) in self._index

    def getlist(self, key: str) -> "list[str]":
        """Every value of `key`, in the order received (empty if absent)."""
        return list(self._index.get(self._fold(key), ()))

    def items(self, multi: bool = False) -> "ItemsView[str, str] | list[tuple[str, str]]":  # type: ignore[override]
        """Pairs; with `multi=True` every pair, including repeated keys."""
        if multi:
            return list(self._items)
        return super().items()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


class Headers(_MultiMapping):
    """Request headers: case-insensitive names, values decoded as Latin-1."""

    __slots__ = ()

    @staticmethod
    def _fold(key: str) -> str:
        return key.lower()


class QueryParams(_MultiMapping):
    """Query-string parameters, percent-decoded; repeated keys are kept."""

    __slots__ = ()


class HTTPError(Exception):
    """Raise to answer with an error status, e.g. `raise HTTPError(404)`.

    The response body is a small JSON object `{"error": message}`.
    """

    status: int
    message: str
    headers: "ResponseHeaders | None"

    def __init__(self, status: int, message: "str | None" = None,
                 headers: "ResponseHeaders | None" = None) -> None:
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be an int in 400..599, got {status!r}")
        super().__init__(status, message)
        self.status = status
        self.message = message if message is not None else _REASONS.get(status, "Error")
        self.headers = headers

    def to_response(self) -> "Response":
        return Response({"error": self.message}, status=self.status, headers=self.headers)


class Request:
    """One incoming HTTP request, as the handler sees it."""

    __slots__ = ("method", "path", "query_string", "headers", "body", "path_params", "_query")

    method: str
    """Upper-case method, e.g. "GET"."""
    path: str
    """Percent-decoded path, starting with "/"."""
    query_string: str
    """Raw query string, without the "?"."""
    headers: "Headers"
    body: bytes
    path_params: "dict[str, Any]"
    """The route's path parameters, converted (also passed as keyword arguments)."""
    _query: "QueryParams | None"

    def __init__(self, method: str, path: str, query_string: str = "",
                 headers: "Headers | HeaderItems" = (), body: bytes = b"",
                 path_params: "Mapping[str, Any] | None" = None) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = bytes(body)
        self.path_params = dict(path_params or {})
        self._query = None

    @property
    def query(self) -> "QueryParams":
        """Parsed query parameters (`QueryParams`), decoded as UTF-8."""
        if self._query is None:
            self._query = QueryParams(
                parse_qsl(self.query_string, keep_blank_values=True, errors="replace")
            )
        return self._query

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased ('' if absent)."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def charset(self) -> str:
        """The content type's charset parameter ("utf-8" if absent)."""
        for param in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset":
                return value.strip().strip('"') or "utf-8"
        return "utf-8"

    @property
    def text(self) -> str:
        """The body decoded with the declared charset (UTF-8 by default).

        Undecodable bytes become U+FFFD rather than failing the request.
        """
        try:
            return self.body.decode(self.charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> "Any":
        """The body parsed as JSON; a malformed body answers 400."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    """An explicit response: body, status and headers.

    `body` may be bytes, str (sent as UTF-8 text), a dict or list (sent as
    JSON) or None (empty). `headers` is a dict or a list of (name, value)
    pairs; a `content-type` given there wins over the one implied by `body`.
    """

    __slots__ = ("body", "status", "headers")

    body: "ResponseBody"
    status: int
    headers: "list[tuple[str, HeaderValue]]"

    def __init__(self, body: "ResponseBody" = b"", status: int = 200,
                 headers: "ResponseHeaders | None" = None) -> None:
        self.body = body
        self.status = status
        if headers is None:
            headers = []
        elif isinstance(headers, Mapping):
            headers = list(headers.items())
        else:
            headers = list(headers)
        self.headers = headers

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
