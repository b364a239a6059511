"""Key-value stores the host granted to this handler.

    from pycage import kv

    store = kv.open("default")                 # a name from key_value_stores
    n = store.increment("visits", 1)           # atomic, across requests and hosts
    store.set("last", request.body)
    store.get("last")                          # bytes, or None

Stores are opened lazily: `kv.open` at module level is fine, and the store
is reached on first use inside a request. Every operation that fails raises
`KeyValueError` with the host's reason (a store not granted, a quota).
Values are bytes (str is stored as UTF-8); `increment` keeps its value as
an ASCII decimal integer, so `get` on it returns e.g. b"42".
"""

from . import _capabilities

# For type checkers only: annotations that name these are strings, never
# evaluated, so that the sandbox does not import `typing` for them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Union

    Value = Union[bytes, bytearray, memoryview, str]

__all__ = ["open", "Store", "KeyValueError"]

# Whether the store interface is wasi:keyvalue@0.2.0-draft (an export for
# `wasmtime serve`): numeric list cursors, unsigned increments, no
# compare-and-swap. Set by the export's build configuration.
try:
    from pycage_build_config import KV_DRAFT as _NUMERIC_CURSORS
except ImportError:  # pycage's own images, pycage.testing on the host
    _NUMERIC_CURSORS = False


class KeyValueError(Exception):
    """A key-value operation failed; the message says why."""


def open(name: str) -> "Store":
    """The store `name` (one of the tenant's `key_value_stores`)."""
    if not isinstance(name, str) or not name:
        raise TypeError("a store name is a non-empty str")
    return Store(name)


def _bytes(value, what="value"):
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a {what} is bytes or str, not {type(value).__name__}")


def _error(err, store):
    """The KeyValueError for a WIT error value."""
    from wit_world.imports import kv_store

    value = getattr(err, "value", err)
    if isinstance(value, kv_store.Error_NoSuchStore):
        return KeyValueError(
            f"store {store!r} is not granted to this handler "
            "(key_value_stores in pycage.toml, --kv on the command line)"
        )
    if isinstance(value, kv_store.Error_AccessDenied):
        return KeyValueError(f"access to store {store!r} was denied")
    if isinstance(value, kv_store.Error_Other):
        return KeyValueError(f"store {store!r}: {value.value}")
    return KeyValueError(f"store {store!r}: {value!r}")


class Store:
    """One granted store; see the module docs."""

    __slots__ = ("name", "_bucket")

    name: str

    def __init__(self, name: str) -> None:
        self.name = name
        self._bucket = None

    def __repr__(self) -> str:
        return f"<pycage.kv.Store {self.name!r}>"

    def _open(self):
        if "a key-value store" in _capabilities.ABSENT:
            # An export for a tenant granted no store imports no
            # wasi:keyvalue: as in `pycage serve`, the store is not granted.
            raise KeyValueError(
                f"store {self.name!r} is not granted to this handler "
                "(key_value_stores in pycage.toml, --kv on the command line)"
            )
        _capabilities.require("a key-value store")
        if self._bucket is None:
            from componentize_py_types import Err
            from wit_world.imports import kv_store

            try:
                self._bucket = kv_store.open(self.name)
            except Err as err:
                raise _error(err, self.name) from None
        return self._bucket

    def _call(self, operation, *args):
        from componentize_py_types import Err

        bucket = self._open()
        try:
            return operation(bucket, *args)
        except Err as err:
            raise _error(err, self.name) from None

    def get(self, key: str) -> "bytes | None":
        """The value of `key` (bytes), or None."""
        return self._call(lambda b, k: b.get(k), _key(key))

    def set(self, key: str, value: "Value") -> None:
        """Store `value` (bytes or str) under `key`."""
        self._call(lambda b, k, v: b.set(k, v), _key(key), _bytes(value))

    def delete(self, key: str) -> None:
        """Remove `key` (nothing happens if it is absent)."""
        self._call(lambda b, k: b.delete(k), _key(key))

    def exists(self, key: str) -> bool:
        """Whether `key` has a value."""
        return self._call(lambda b, k: b.exists(k), _key(key))

    def list_keys(self, cursor: "str | None" = None) -> "tuple[list[str], str | None]":
        """One page of keys: `(keys, next_cursor)`; `next_cursor` is None
        after the last page."""
        if _NUMERIC_CURSORS:
            # wasi:keyvalue@0.2.0-draft (`wasmtime serve`) pages with a
            # number: pycage's API keeps cursors opaque strings.
            if cursor is not None:
                try:
                    cursor = int(cursor)
                except ValueError:
                    raise KeyValueError(f"store {self.name!r}: not a cursor: {cursor!r}") from None
            page = self._call(lambda b, c: b.list_keys(c), cursor)
            return list(page.keys), None if page.cursor is None else str(page.cursor)
        page = self._call(lambda b, c: b.list_keys(c), cursor)
        return list(page.keys), page.cursor

    def keys(self) -> "Iterator[str]":
        """Every key, page by page."""
        cursor = None
        while True:
            page, cursor = self.list_keys(cursor)
            yield from page
            if cursor is None:
                return

    def increment(self, key: str, delta: int = 1) -> int:
        """Add `delta` to the integer under `key` (0 if absent), atomically,
        and return the new value."""
        from wit_world.imports import kv_atomics

        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError("delta is an int")
        if _NUMERIC_CURSORS and delta < 0:
            raise KeyValueError(
                f"store {self.name!r}: this host's wasi:keyvalue (0.2.0-draft) only adds; "
                "a negative delta needs compare_and_swap or another host"
            )
        return self._call(lambda b, k, d: kv_atomics.increment(b, k, d), _key(key), delta)

    def compare_and_swap(self, key: str, expected: "Value | None", new: "Value") -> bool:
        """Set `key` to `new` only if its value is still `expected` (None:
        absent); True if it was set. Atomic across requests and hosts."""
        from componentize_py_types import Err
        from wit_world.imports import kv_atomics

        if _NUMERIC_CURSORS:
            raise KeyValueError(
                f"store {self.name!r}: this host's wasi:keyvalue (0.2.0-draft) has no compare-and-swap"
            )
        expected = None if expected is None else _bytes(expected, "expected value")
        new = _bytes(new)
        bucket = self._open()
        try:
            cas = kv_atomics.Cas.new(bucket, _key(key))
            if cas.current() != expected:
                return False
            kv_atomics.swap(cas, new)
            return True
        except Err as err:
            if isinstance(err.value, kv_atomics.CasError_CasFailed):
                return False
            if isinstance(err.value, kv_atomics.CasError_StoreError):
                raise _error(err.value.value, self.name) from None
            raise _error(err, self.name) from None

    def get_json(self, key: str, default: "Any" = None) -> "Any":
        """The value of `key` parsed as JSON, or `default` if absent."""
        import json

        value = self.get(key)
        return default if value is None else json.loads(value)

    def set_json(self, key: str, value: "Any") -> None:
        """Store `value` as compact JSON."""
        import json

        self.set(key, json.dumps(value, separators=(",", ":")))


def _key(key):
    if not isinstance(key, str):
        raise TypeError(f"a key is a str, not {type(key).__name__}")
    return key
