"""A stand-in for the real worker, for profiling the Elixir harness alone (bench/profile).

Put this directory first on the worker's PYTHONPATH (Snakeport's ``:python_path``) and
``python -m snakeport`` runs ``__main__.py`` here: it answers every request with a canned
reply read from the request's first bytes, without decoding it. Never installed.
"""

PROTOCOL_VERSION = 1
