"""Variables the host set for this handler (`variables` in pycage.toml):
plain values and secrets alike, read at request time.

    from pycage import config

    token = config.get("weather_token")        # str, or None if not set
    region = config.get("region", "eu")

A secret is only ever in the instance that reads it: never in the build's
snapshot (reading a variable while the handler is imported raises), never
in pycage's logs.
"""

from . import _capabilities

__all__ = ["get", "get_all", "VariableError"]


class VariableError(Exception):
    """The host could not provide a variable."""


def get(name: str, default: "str | None" = None) -> "str | None":
    """The value of variable `name`, or `default` if it is not set."""
    if not isinstance(name, str):
        raise TypeError("a variable name is a str")
    if _absent():
        return default
    from componentize_py_types import Err
    from wit_world.imports import config_store

    try:
        value = config_store.get(name)
    except Err as err:
        raise VariableError(f"variable {name!r}: {getattr(err.value, 'value', err.value)}") from None
    return default if value is None else value


def get_all() -> "dict[str, str]":
    """Every variable, as a dict."""
    if _absent():
        return {}
    from componentize_py_types import Err
    from wit_world.imports import config_store

    try:
        return dict(config_store.get_all())
    except Err as err:
        raise VariableError(f"variables: {getattr(err.value, 'value', err.value)}") from None


def _absent():
    """Whether this component has no variables at all: an export for a
    tenant granted none imports no `wasi:config`, which reads as no
    variable being set, as in `pycage serve`. Raises at build time."""
    what = "a configuration variable"
    if what in _capabilities.ABSENT:
        return True
    _capabilities.require(what)
    return False
