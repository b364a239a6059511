"""The router on the host's own Python: registration, matching, errors.

Run with `python3 -m unittest discover -s guest-python/tests -t guest-python`
(cargo test runs it: host/tests/guest_python.rs).
"""

import unittest

from pycage import _router
from pycage._router import MethodNotAllowed, NotFound, RouteError, route


class RouterTest(unittest.TestCase):
    def setUp(self):
        self.saved = list(_router._table)
        _router._table.clear()
        _router._ordered = None

    def tearDown(self):
        _router._table[:] = self.saved
        _router._ordered = None

    def test_static_routes_win_and_parameters_convert(self):
        @route("/items/{item_id}")
        def item(item_id: int):
            return item_id

        @route("/items/new")
        def new():
            return "new"

        found, params = _router.match("GET", "/items/new")
        self.assertIs(found.func, new)
        found, params = _router.match("GET", "/items/42")
        self.assertEqual(params, {"item_id": 42})
        with self.assertRaises(NotFound):
            _router.match("GET", "/items/abc")  # not an int: no match

    def test_path_parameters_take_the_rest(self):
        @route("/files/{rest:path}")
        def files(rest):
            return rest

        _, params = _router.match("GET", "/files/a/b/c.txt")
        self.assertEqual(params, {"rest": "a/b/c.txt"})

    def test_method_not_allowed_lists_methods_and_head_follows_get(self):
        @route("/thing", methods=["GET", "post"])
        def thing():
            return None

        found, _ = _router.match("HEAD", "/thing")
        self.assertIs(found.func, thing)
        with self.assertRaises(MethodNotAllowed) as caught:
            _router.match("DELETE", "/thing")
        self.assertEqual(caught.exception.allowed, ["GET", "POST", "HEAD"])

    def test_bad_declarations_are_refused(self):
        with self.assertRaises(RouteError):
            route("no-slash")
        with self.assertRaises(RouteError):
            route("/x", methods=["G T"])
        with self.assertRaises(RouteError):

            @route("/users/{id}")
            def user(name):
                return name

        with self.assertRaises(RouteError):
            route("/x/{a}/{a}")(lambda a: a)

    def test_the_ordered_table_is_computed_once(self):
        route("/a")(lambda: 1)
        first = _router.table()
        self.assertIs(_router.table(), first)
        route("/b")(lambda: 2)
        self.assertEqual(len(_router.table()), 2)

    def test_the_request_is_passed_when_asked_for(self):
        @route("/r/{x}")
        def with_request(request, x):
            return x

        @route("/n/{x}")
        def without(x):
            return x

        self.assertTrue(_router.match("GET", "/r/1")[0].wants_request)
        self.assertFalse(_router.match("GET", "/n/1")[0].wants_request)


if __name__ == "__main__":
    unittest.main()
