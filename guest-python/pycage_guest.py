"""WIT export glue: the only Python code the pycage host calls.

Imported once, at build time, inside componentize-py's pre-initialisation:
it imports the handler's entry module (so the handler and everything it
imports land in the snapshot), reports the outcome to the host, warms the
request path and shapes the snapshot. At request time the host calls
`Handler.routes` or `Handler.dispatch` on a fresh instance of that snapshot.

The pieces live in `pycage._glue` (load, snapshot, exports, warm); this
module runs them in order and names the export class componentize-py looks
for.
"""

from pycage import _capabilities, _compat
from pycage._glue import exports, load, snapshot, warm
from pycage._glue.exports import Handler

__all__ = ["Handler"]

# Build time, in this order: the seed wrapper before anything imports
# random's functions, the standard library's gaps filled (pycage._compat),
# the handler (with the capabilities refused: nothing external may enter
# the snapshot), the warm-up, then the snapshot's objects (last:
# everything above allocates). Every request's instance starts with the
# capabilities available.
snapshot.install_fresh_seed()
_compat.install()
routes = load.load()
exports.ROUTES = exports.wit_routes(routes)
warm.warm(routes)
_capabilities.enable()
_SNAPSHOT = snapshot.prepare()
