"""Whether the host's capabilities (key-value stores, outbound HTTP,
variables) may be used now.

While the handler is imported at build time they may not: whatever the
import does ends up in the snapshot every request starts from, and nothing
external (a stored value, a fetched page, a secret) may be part of it. The
glue sets `AVAILABLE` once the import is done, so every request's instance
starts with it set.
"""

AVAILABLE = False

# What this component was built without, by the names `require` is called
# with: an exported component (`pycage export --target wasi-http`) imports
# only the interfaces its tenant is granted, so that hosts without them
# (`wasmtime serve` without `-Skeyvalue`) can still run it.
ABSENT = frozenset()

# The bindings each capability needs, by those names.
_BINDINGS = {
    "a key-value store": ("kv_store", "kv_atomics"),
    "a configuration variable": ("config_store",),
    "outbound HTTP": ("http_types", "outgoing_handler"),
}


class CapabilityError(RuntimeError):
    """A capability was used where it cannot be."""


def require(what):
    if what in ABSENT:
        raise CapabilityError(
            f"{what} is not part of this component: it was exported without that interface "
            "because the tenant is granted none (see `pycage export --help`)"
        )
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
    global AVAILABLE, ABSENT
    import importlib

    import componentize_py_types  # noqa: F401
    from wit_world.imports import io_error, io_poll, io_streams, monotonic_clock  # noqa: F401

    from pycage import _fetch, config, kv  # noqa: F401

    # Only an export's world may leave an interface out; in pycage's own
    # images a missing binding is a broken build, not an absent capability.
    try:
        from pycage_build_config import OPTIONAL_CAPABILITIES as optional
    except ImportError:
        optional = False
    absent = set()
    for what, modules in _BINDINGS.items():
        for module in modules:
            try:
                importlib.import_module(f"wit_world.imports.{module}")
            except ImportError:
                if not optional:
                    raise
                absent.add(what)
    ABSENT = frozenset(absent)
    AVAILABLE = True
