"""What a handler returns, turned into status, headers and bytes."""

import unittest

from pycage._convert import to_wire
from pycage._http import HTTPError, Response


class ConvertTest(unittest.TestCase):
    def test_each_kind_of_return_value(self):
        self.assertEqual(to_wire({"a": 1}), (200, [("content-type", b"application/json")], b'{"a": 1}'))
        self.assertEqual(to_wire("hé"), (200, [("content-type", b"text/plain; charset=utf-8")], "hé".encode()))
        self.assertEqual(to_wire(b"\x00"), (200, [("content-type", b"application/octet-stream")], b"\x00"))
        self.assertEqual(to_wire(None), (204, [], b""))
        self.assertEqual(to_wire(("x", 201))[0], 201)
        status, headers, _ = to_wire(("x", 202, {"X-A": "1"}))
        self.assertEqual(status, 202)
        self.assertIn(("X-A", b"1"), headers)

    def test_an_explicit_content_type_wins(self):
        _, headers, _ = to_wire(Response("<p>", headers={"Content-Type": "text/html"}))
        self.assertEqual(headers, [("Content-Type", b"text/html")])

    def test_invalid_values_raise_with_a_reason(self):
        for bad in (object(), 3.5, {"x": float("nan")}):
            with self.assertRaises((TypeError, ValueError)):
                to_wire(bad)
        for status in (100, 101, 199, 600, True, "200"):
            with self.assertRaises(ValueError):
                to_wire(Response("x", status=status))
        with self.assertRaises(ValueError):
            to_wire(Response("x", headers=[("x", "☃")]))
        with self.assertRaises(TypeError):
            to_wire(Response("x", headers=[("x",)]))
        with self.assertRaises(TypeError):
            to_wire(("a", 200, {}, "extra"))

    def test_http_errors_become_json_responses(self):
        status, _, body = to_wire(HTTPError(403, "no").to_response())
        self.assertEqual((status, body), (403, b'{"error": "no"}'))


if __name__ == "__main__":
    unittest.main()
