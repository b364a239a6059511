"""The everyday alternative to a sandbox: one native CPython process per
request, running the same handler through the same pycage framework code
(routing, request object, response conversion) that runs inside the guest.

    python3 scripts/bench_native.py HANDLER_DIR MODULE METHOD PATH

Prints the response body. Used by host/examples/bench.rs.
"""

import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
handler_dir, module, method, path = sys.argv[1:5]
sys.path[:0] = [os.path.join(here, "..", "guest-python"), handler_dir]

import importlib  # noqa: E402

from pycage import _router  # noqa: E402
from pycage._convert import to_wire  # noqa: E402
from pycage._http import Headers, Request  # noqa: E402

importlib.import_module(module)
route, params = _router.match(method, path)
request = Request(method, path, "", Headers([("user-agent", "bench")]), b"")
request.path_params = params
result = route.func(request, **params) if route.wants_request else route.func(**params)
status, headers, body = to_wire(result)
sys.stdout.buffer.write(body)
