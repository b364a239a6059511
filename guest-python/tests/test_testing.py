"""pycage.testing.TestClient on the host's own Python, and the package's
build configuration (guest-python/pyproject.toml).

Run with `python3 -m unittest discover -s guest-python/tests -t guest-python`
(cargo test runs it: host/tests/guest_python.rs).
"""

import ast
import contextlib
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
import zipfile

import pycage
from pycage import FetchError, FetchResponse, _apps, _capabilities, _router
from pycage._capabilities import CapabilityError
from pycage.kv import KeyValueError
from pycage.testing import NoRoutes, TestClient

GUEST_PYTHON = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HANDLER = '''
import asyncio

from pycage import FetchError, HTTPError, Request, Response, config, fetch, fetch_async, kv, route

store = kv.open("default")
COUNT = 0


@route("/hello/{name}")
def hello(request: Request, name: str):
    return {"hello": name, "q": request.query.getlist("q"), "agent": request.headers.get("User-Agent")}


@route("/items/{item_id}", methods=["POST"])
def create(request, item_id: int):
    return {"id": item_id, "got": request.json()}, 201


@route("/echo", methods=["PUT"])
def echo(request):
    return Response(request.body, headers={"Content-Type": request.headers.get("content-type", "x/y")})


@route("/visits/{page}", methods=["POST"])
def visit(page):
    return {"page": page, "visits": store.increment(f"visits:{page}")}


@route("/kv/{op}")
def kv_ops(op):
    s = kv.open("default")
    if op == "set":
        s.set("greeting", "hé")
        s.set_json("doc", {"a": [1]})
        return {"exists": s.exists("greeting"), "keys": list(s.keys())}
    if op == "get":
        return {"greeting": s.get("greeting").decode(), "doc": s.get_json("doc"), "none": s.get("none")}
    if op == "cas":
        return {"first": s.compare_and_swap("c", None, "1"), "stale": s.compare_and_swap("c", None, "2"),
                "second": s.compare_and_swap("c", "1", "2"), "value": s.get("c").decode()}
    if op == "delete":
        s.delete("greeting")
        return {"exists": s.exists("greeting")}
    if op == "not-a-number":
        s.set("word", "abc")
        return {"n": s.increment("word")}
    if op == "ungranted":
        return {"x": kv.open("secret-store").get("x")}
    if op == "big-key":
        return {"x": s.get("k" * 2000)}


@route("/config")
def variables():
    return {"region": config.get("region"), "fallback": config.get("unset", "dflt"),
            "all": config.get_all()}


@route("/weather/{city}")
def weather(city):
    try:
        r = fetch(f"https://api.example.com/w?q={city}", headers={"Accept": "application/json"})
    except FetchError as exc:
        return {"error": str(exc)}, 502
    return {"status": r.status, "data": r.json(), "url": r.url}


@route("/async")
async def concurrently():
    a, b = await asyncio.gather(fetch_async("https://a.example/"), fetch_async("https://b.example/"))
    return {"a": a.text, "b": b.text}


@route("/count")
def count():
    global COUNT
    COUNT += 1
    return {"count": COUNT}


@route("/boom")
def boom():
    raise RuntimeError("kaboom")


@route("/teapot")
def teapot():
    raise HTTPError(418, "short and stout")


@route("/framing")
def framing():
    return Response("hi", headers=[("Content-Length", "999"), ("X-Custom", "1"), ("Connection", "close")])


@route("/empty", methods=["DELETE"])
def empty():
    return None


@route("/files/{rest:path}")
def files(rest):
    return rest
'''


def write(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return path


@contextlib.contextmanager
def quiet():
    """Swallow the tracebacks the client prints for 500s."""
    with contextlib.redirect_stderr(io.StringIO()) as err:
        yield err


class TestClientTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.handler = write(self.dir, "handler.py", HANDLER)
        self.routes_before = (list(_router._table), _router._ordered)
        self.cwd = os.getcwd()
        self.path = list(sys.path)

    def tearDown(self):
        # Nothing of a client leaks into the process.
        self.assertEqual((list(_router._table), _router._ordered), self.routes_before)
        self.assertIsNone(_apps.APP)
        self.assertFalse(_capabilities.AVAILABLE)
        self.assertEqual(os.getcwd(), self.cwd)
        self.assertEqual(sys.path, self.path)
        self.assertNotIn("handler", sys.modules)
        self.assertNotIn("wit_world", sys.modules)
        self.tmp.cleanup()

    def client(self, **kwargs):
        return TestClient(self.handler, **kwargs)

    def test_path_parameters_query_and_headers(self):
        c = self.client()
        r = c.get("/hello/ada?q=1", query={"q": ["2", "3"]}, headers={"User-Agent": "tests"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["Content-Type"], "application/json")
        self.assertEqual(r.json(), {"hello": "ada", "q": ["1", "2", "3"], "agent": "tests"})
        # The path arrives percent-decoded, as the host hands it over.
        self.assertEqual(c.get("/hello/caf%C3%A9").json()["hello"], "café")
        self.assertEqual(c.get("/files/a/b%20c.txt").text, "a/b c.txt")
        with self.assertRaises(ValueError):
            c.get("/hello/%FF")
        with self.assertRaises(ValueError):
            c.get("no-slash")

    def test_json_and_raw_bodies(self):
        c = self.client()
        r = c.post("/items/42", json={"name": "thing"})
        self.assertEqual((r.status, r.json()), (201, {"id": 42, "got": {"name": "thing"}}))
        bad = c.post("/items/42", data="{not json", headers={"content-type": "application/json"})
        self.assertEqual(bad.status, 400)
        self.assertIn("not valid JSON", bad.json()["error"])
        echoed = c.put("/echo", data=b"\x00\x01", headers={"Content-Type": "application/x-raw"})
        self.assertEqual((echoed.body, echoed.headers["content-type"]), (b"\x00\x01", "application/x-raw"))
        # A path parameter that does not convert does not match.
        self.assertEqual(c.post("/items/abc", json={}).status, 404)

    def test_not_found_method_not_allowed_and_head(self):
        c = self.client()
        missing = c.get("/nowhere")
        self.assertEqual((missing.status, missing.body), (404, b'{"error":"Not Found"}'))
        self.assertEqual(missing.headers["content-type"], "application/json")
        wrong = c.delete("/hello/ada")
        self.assertEqual((wrong.status, wrong.json()), (405, {"error": "Method Not Allowed"}))
        self.assertEqual(wrong.headers["allow"], "GET, HEAD")
        head = c.head("/hello/ada")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.headers["content-type"], "application/json")
        self.assertEqual(c.delete("/empty").status, 204)

    def test_http_errors_and_exceptions(self):
        c = self.client()
        teapot = c.get("/teapot")
        self.assertEqual((teapot.status, teapot.json()), (418, {"error": "short and stout"}))
        with quiet() as err:
            boom = c.get("/boom")
        self.assertEqual((boom.status, boom.json()), (500, {"error": "Internal Server Error"}))
        self.assertIsInstance(boom.exception, RuntimeError)
        self.assertEqual(boom.error, "RuntimeError: kaboom")
        self.assertIn("kaboom", err.getvalue())
        with self.assertRaises(RuntimeError):
            self.client(raise_exceptions=True).get("/boom")

    def test_the_host_drops_framing_headers(self):
        r = self.client().get("/framing")
        self.assertEqual(r.headers.items(multi=True),
                         [("content-type", "text/plain; charset=utf-8"), ("x-custom", "1")])

    def test_kv_persists_across_requests_of_one_client(self):
        c = self.client(kv={"default": {"visits:home": 41}})
        self.assertEqual(c.post("/visits/home").json(), {"page": "home", "visits": 42})
        self.assertEqual(c.post("/visits/home").json()["visits"], 43)
        self.assertEqual(c.post("/visits/blog").json()["visits"], 1)
        self.assertEqual(c.kv["default"], {"visits:home": b"43", "visits:blog": b"1"})
        # Another client has its own stores.
        self.assertEqual(self.client(kv=["default"]).post("/visits/home").json()["visits"], 1)

    def test_kv_api_and_errors_are_the_real_ones(self):
        c = self.client(kv=["default"])
        self.assertEqual(c.get("/kv/set").json(), {"exists": True, "keys": ["doc", "greeting"]})
        self.assertEqual(c.get("/kv/get").json(), {"greeting": "hé", "doc": {"a": [1]}, "none": None})
        self.assertEqual(c.get("/kv/cas").json(),
                         {"first": True, "stale": False, "second": True, "value": "2"})
        self.assertEqual(c.get("/kv/delete").json(), {"exists": False})
        for op, message in [
            ("not-a-number", "store 'default': the value is not an integer"),
            ("ungranted", "store 'secret-store' is not granted to this handler"),
            ("big-key", "store 'default': the key is 2000 bytes, over the limit of 1024"),
        ]:
            with quiet():
                r = c.get(f"/kv/{op}")
            self.assertEqual(r.status, 500, op)
            self.assertIsInstance(r.exception, KeyValueError)
            self.assertIn(message, str(r.exception))

    def test_capabilities_are_refused_while_importing(self):
        write(self.dir, "eager.py", '''
            from pycage import kv, route
            VALUE = kv.open("default").get("x")
            route("/")(lambda: "never")
        ''')
        with self.assertRaises(CapabilityError):
            TestClient(os.path.join(self.dir, "eager.py"), kv=["default"])

    def test_config(self):
        r = self.client(config={"region": "eu-west"}).get("/config")
        self.assertEqual(r.json(), {"region": "eu-west", "fallback": "dflt", "all": {"region": "eu-west"}})
        with self.assertRaises(TypeError):
            self.client(config={"n": 1})

    def test_fetch_is_the_given_function(self):
        def fake(request):
            if "a.example" in request.url:
                return "from a"
            if "b.example" in request.url:
                return FetchResponse(200, pycage.Headers([]), b"from b", request.url)
            if "paris" in request.url:
                return {"temp": 21}
            if "moved" in request.url:
                return pycage.Response(None, status=302, headers={"Location": "https://api.example.com/w?q=paris"})
            raise FetchError(f"{request.url}: the host's address is not allowed")

        c = self.client(fetch=fake)
        r = c.get("/weather/paris")
        self.assertEqual(r.json(), {"status": 200, "data": {"temp": 21}, "url": "https://api.example.com/w?q=paris"})
        sent = c.fetches[-1]
        self.assertEqual((sent.method, sent.headers["accept"]), ("GET", "application/json"))
        # Redirects are followed by pycage's own fetch code.
        self.assertEqual(c.get("/weather/moved").json()["data"], {"temp": 21})
        self.assertEqual(c.get("/weather/rome").status, 502)
        self.assertEqual(c.get("/async").json(), {"a": "from a", "b": "from b"})

    def test_fetch_without_a_fake_is_not_granted(self):
        with quiet():
            r = self.client().get("/weather/paris")
        self.assertEqual(r.status, 500)
        self.assertIsInstance(r.exception, CapabilityError)
        self.assertIn("not granted in this TestClient", str(r.exception))

    def test_module_state_persists_unless_fresh(self):
        c = self.client()
        self.assertEqual([c.get("/count").json()["count"] for _ in range(3)], [1, 2, 3])
        self.assertEqual(c.module.COUNT, 3)
        f = self.client(fresh=True, kv=["default"])
        self.assertEqual([f.get("/count").json()["count"] for _ in range(3)], [1, 1, 1])
        # kv is the host's, not the module's: it persists either way.
        self.assertEqual([f.post("/visits/a").json()["visits"] for _ in range(2)], [1, 2])

    def test_each_client_has_its_own_route_table_and_modules(self):
        other = os.path.join(self.dir, "other")
        os.mkdir(other)
        write(other, "app.py", '''
            from pycage import route
            from helpers import greeting

            @route("/hello/{name}")
            def hello(name):
                return greeting(name)
        ''')
        write(other, "helpers.py", '''
            def greeting(name):
                return "hi " + name
        ''')
        first, second = self.client(), TestClient(other)
        self.assertEqual(first.get("/hello/x").json()["hello"], "x")
        self.assertEqual(second.get("/hello/x").text, "hi x")
        self.assertEqual(second.get("/count").status, 404)
        self.assertNotIn("helpers", sys.modules)
        # A module object stands for its directory and is imported anew.
        spec = importlib.util.spec_from_file_location("handler", self.handler)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _router._table[:], _router._ordered = self.routes_before  # its own @route calls
        by_module = TestClient(module)
        self.assertIsNot(by_module.module, module)
        self.assertEqual(by_module.get("/count").json(), {"count": 1})

    def test_wsgi_and_asgi_apps(self):
        write(self.dir, "wsgi.py", '''
            def app(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [environ["PATH_INFO"].encode(), b" ", environ["QUERY_STRING"].encode(),
                        b" ", environ["HTTP_HOST"].encode()]
        ''')
        write(self.dir, "asgi.py", '''
            async def application(scope, receive, send):
                body = (await receive())["body"]
                await send({"type": "http.response.start", "status": 201,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": scope["method"].encode() + b" " + body})
        ''')
        wsgi = TestClient(os.path.join(self.dir, "wsgi.py"))
        self.assertEqual(wsgi.get("/any/path?a=1").text, "/any/path a=1 testserver")
        asgi = TestClient(os.path.join(self.dir, "asgi.py"))
        r = asgi.post("/x", data="payload")
        self.assertEqual((r.status, r.text), (201, "POST payload"))
        write(self.dir, "nothing.py", "X = 1\n")
        with self.assertRaises(NoRoutes):
            TestClient(os.path.join(self.dir, "nothing.py"))


class PackagingTest(unittest.TestCase):
    """guest-python/pyproject.toml makes a wheel of `pycage` alone."""

    def test_pyproject_declares_the_package(self):
        try:
            import tomllib
        except ImportError:
            self.skipTest("tomllib needs Python 3.11")
        with open(os.path.join(GUEST_PYTHON, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)
        self.assertEqual(project["project"]["name"], "pycage")
        self.assertEqual(project["project"]["dynamic"], ["version"])  # pycage.__version__
        self.assertEqual(project["project"]["dependencies"], [])
        self.assertEqual(project["project"]["requires-python"], ">=3.10")
        self.assertEqual(project["build-system"]["build-backend"], "flit_core.buildapi")
        self.assertEqual(project["tool"]["flit"]["module"]["name"], "pycage")
        self.assertTrue(os.path.isfile(os.path.join(GUEST_PYTHON, "pycage", "py.typed")))
        self.assertEqual(pycage.__version__, "0.1.0")

    def test_sandbox_modules_import_nothing_for_annotations(self):
        # Annotations must cost the sandbox nothing: no `typing`, no
        # `__future__` imported at run time (only under TYPE_CHECKING).
        package = os.path.join(GUEST_PYTHON, "pycage")
        for name in sorted(os.listdir(package)):
            if not name.endswith(".py") or name == "testing.py":
                continue
            with open(os.path.join(package, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in tree.body:
                if isinstance(node, ast.ImportFrom):
                    self.assertNotIn(node.module, ("__future__", "typing"), name)
                if isinstance(node, ast.Import):
                    self.assertNotIn("typing", [a.name for a in node.names], name)

    def test_the_wheel_holds_pycage_only_and_installs(self):
        try:
            import flit_core  # noqa: F401
        except ImportError:
            self.skipTest("flit_core is not installed: the wheel cannot be built offline")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--no-index", "-q", "-w", tmp, GUEST_PYTHON],
                check=True, capture_output=True,
            )
            (wheel,) = [n for n in os.listdir(tmp) if n.endswith(".whl")]
            self.assertTrue(wheel.startswith("pycage-0.1.0-py3-none-any"), wheel)
            names = zipfile.ZipFile(os.path.join(tmp, wheel)).namelist()
            for name in names:
                self.assertTrue(name.startswith(("pycage/", "pycage-0.1.0.dist-info/")), name)
            for name in ("pycage/py.typed", "pycage/testing.py", "pycage/_glue/exports.py"):
                self.assertIn(name, names)
            self.assertFalse([n for n in names if "__pycache__" in n or n.endswith(".pyc")])
            # Installed into a throwaway virtual environment, it works there.
            venv = os.path.join(tmp, "venv")
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
            python = os.path.join(venv, "bin", "python")
            subprocess.run(
                [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                 "--no-index", "-q", os.path.join(tmp, wheel)],
                check=True, capture_output=True,
            )
            check = (
                "import os, pycage, pycage.testing; "
                "assert os.path.exists(os.path.join(os.path.dirname(pycage.__file__), 'py.typed')); "
                "print(pycage.__file__)"
            )
            out = subprocess.run([python, "-I", "-c", check], check=True, capture_output=True,
                                 text=True, cwd=tmp)
            self.assertTrue(out.stdout.strip().startswith(venv), out.stdout)


if __name__ == "__main__":
    unittest.main()
