"""Request, Headers, QueryParams and HTTPError on the host's own Python."""

import unittest

from pycage._http import Headers, HTTPError, QueryParams, Request


class RequestTest(unittest.TestCase):
    def test_headers_are_case_insensitive_and_multi_valued(self):
        h = Headers([("Set-Thing", "a"), ("set-thing", "b"), ("X", "1")])
        self.assertEqual(h["SET-THING"], "a")
        self.assertEqual(h.getlist("set-thing"), ["a", "b"])
        self.assertEqual(len(h), 2)
        self.assertIn("x", h)
        self.assertNotIn(1, h)

    def test_query_is_parsed_once_and_keeps_repeats_and_blanks(self):
        r = Request("GET", "/", "a=1&a=2&empty=&caf%C3%A9=%E2%9C%93")
        self.assertEqual(r.query.getlist("a"), ["1", "2"])
        self.assertEqual(r.query["empty"], "")
        self.assertEqual(r.query["café"], "✓")
        self.assertIs(r.query, r.query)
        self.assertIsInstance(r.query, QueryParams)

    def test_text_uses_the_declared_charset_and_never_fails(self):
        latin = Request("POST", "/", headers=[("Content-Type", "text/plain; charset=latin-1")], body="é".encode("latin-1"))
        self.assertEqual(latin.text, "é")
        self.assertEqual(latin.content_type, "text/plain")
        broken = Request("POST", "/", body=b"\xff")
        self.assertEqual(broken.text, "\ufffd")
        unknown = Request("POST", "/", headers=[("content-type", "text/plain; charset=nope")], body=b"ok")
        self.assertEqual(unknown.text, "ok")

    def test_malformed_json_is_a_400(self):
        with self.assertRaises(HTTPError) as caught:
            Request("POST", "/", body=b"{not json").json()
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(Request("POST", "/", body=b'{"k": [1]}').json(), {"k": [1]})

    def test_http_error_statuses_are_checked(self):
        self.assertEqual(HTTPError(404).message, "Not Found")
        self.assertEqual(HTTPError(418).message, "Error")
        for bad in (200, 600, "404", None):
            with self.assertRaises(ValueError):
                HTTPError(bad)


if __name__ == "__main__":
    unittest.main()
