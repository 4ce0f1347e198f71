"""Imported by ``--preload`` in the tests: records that it ran before the first call."""

import time

IMPORTED_AT = time.monotonic()
