-- wrk script: POST a small JSON document to /echo (fixtures/api).
wrk.method = "POST"
wrk.body = '{"user": "ada", "items": [1, 2, 3], "note": "bench"}'
wrk.headers["Content-Type"] = "application/json"
