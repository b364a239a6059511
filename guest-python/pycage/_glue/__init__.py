"""The glue behind the WIT exports, in pieces by job.

`load` imports the handler at build time and reports the outcome to the
host; `snapshot` shapes the interpreter state the snapshot keeps; `exports`
answers the host's calls at request time; `warm` runs the request path at
build time so that the snapshot holds it warmed. `pycage_guest` (the module
componentize-py imports) runs them in order.
"""
