"""wasi:http export glue (`pycage export`): the module componentize-py
imports at build time for an exported component.

Like `pycage_guest` it fills the standard library's gaps, imports the
handler (capabilities refused: nothing external may enter the snapshot)
and makes the capabilities available to every request's instance; the
export class is `IncomingHandler` (`wasi:http/incoming-handler@0.2.0`).
pycage's own image optimisations (the seed wrapper, immortal objects,
the warmed dispatch path) stay out: the export is a plain component that
any wasi:http host runs.
"""

from pycage import _capabilities, _compat
from pycage._glue import load, warm
from pycage._glue.wasi_http import IncomingHandler

__all__ = ["IncomingHandler"]

_compat.install()
routes = load.load()
warm.warm_async_if_used(routes)
_capabilities.enable()
