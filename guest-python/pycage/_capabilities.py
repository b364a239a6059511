"""Whether the host's capabilities (key-value stores, outbound HTTP,
variables) may be used now.

While the handler is imported at build time they may not: whatever the
import does ends up in the snapshot every request starts from, and nothing
external (a stored value, a fetched page, a secret) may be part of it. The
glue sets `AVAILABLE` once the import is done, so every request's instance
starts with it set.
"""

AVAILABLE = False


class CapabilityError(RuntimeError):
    """A capability was used where it cannot be."""


def require(what):
    if not AVAILABLE:
        raise CapabilityError(
            f"{what} is not available while the handler is being imported at build time "
            "(nothing external may be part of the snapshot every request starts from); "
            "use it inside a request handler"
        )


def enable():
    """Make the capabilities available to every request's instance: called
    by the glue at build time, after the handler's import, so that the
    bindings' modules are part of the snapshot (a request's instance has no
    files to import them from) and `AVAILABLE` is set in it."""
    global AVAILABLE
    import componentize_py_types  # noqa: F401
    from wit_world.imports import (  # noqa: F401
        config_store,
        http_types,
        io_error,
        io_poll,
        io_streams,
        kv_atomics,
        kv_store,
        monotonic_clock,
        outgoing_handler,
    )

    from pycage import _fetch, config, kv  # noqa: F401

    AVAILABLE = True
