"""The `snakeport` package's own namespace: every public name, and a cheap `import snakeport`.

The harness runs ``python -c "import snakeport"`` to diagnose an interpreter whose worker
failed before its ready frame (and ``mix snakeport.doctor`` does), so importing the package
alone must not pull in the worker's machinery.
"""

from __future__ import annotations

import os
import subprocess
import sys

import snakeport
from snakeport import _context, extensions

#: The flags the harness starts a worker with by default (``Snakeport.Options.worker_flags/1``).
HARNESS_FLAGS = (
    "--default-max-refs", "10000", "--default-ttl-seconds", "3600", "--default-overflow", "error",
    "--tool-timeout", "30", "--forward-logs", "INFO",
)  # fmt: skip

#: Modules that a worker started as the harness starts it does not import before a request
#: needs them: each costs every worker memory (the bench's ``rss_idle``).
NOT_AT_START = (
    "shutil",  # argparse's help formatter (with bz2, lzma and their shared libraries)
    "bz2",
    "lzma",
    "ctypes",  # cancels and the parent-death signal use the C lane's module (0.35 MB with libffi)
    "_ctypes",
    "snakeport._eval",  # the eval op's
    "snakeport._arrow",  # result => arrow's
)


def test_every_public_name_is_there_and_is_the_defining_modules() -> None:
    for name in snakeport.__all__:
        assert getattr(snakeport, name) is not None, name
    assert snakeport.register_encoder is extensions.register_encoder
    assert snakeport.register_decoder is extensions.register_decoder
    assert snakeport.Extension is extensions.Extension
    assert snakeport.context is _context.context
    namespace: dict = {}
    exec("from snakeport import *", namespace)
    assert set(snakeport.__all__) <= set(namespace)


def test_import_snakeport_alone_loads_no_worker_machinery() -> None:
    code = (
        "import sys, snakeport; "
        "print(sorted(m for m in sys.modules if m.startswith('snakeport.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = eval(out.stdout)
    assert loaded == ["snakeport.errors"], loaded


def test_an_idle_worker_imports_only_what_its_start_needs(make_worker) -> None:
    w = make_worker(*HARNESS_FLAGS, "--vm-pid", str(os.getpid()))
    assert w.call("operator", "add", [1, 2]) == 3
    w.ok("stats")
    loaded = [m for m in NOT_AT_START if w.call("sp_testmod", "imported", [m])]
    assert loaded == []
