"""The `snakeport` package's own namespace: every public name, and a cheap `import snakeport`.

The harness runs ``python -c "import snakeport"`` to diagnose an interpreter whose worker
failed before its ready frame (and ``mix snakeport.doctor`` does), so importing the package
alone must not pull in the worker's machinery.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
    # Start time (issue 8, bench/profile/cold_start.py): annotations import typing only for
    # type checkers (~3 ms of a start); the allow-list is imported by a worker that has one.
    "typing",
    "snakeport._allow",
)

#: Modules that a worker does not import before its ready frame, for its start time alone
#: (user code may well import them later).
NOT_BEFORE_READY = (
    *NOT_AT_START,
    "signal",  # _process takes SIGKILL from _signal: signal builds three enums (~0.7 ms)
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


def test_the_start_imports_only_what_it_needs() -> None:
    # -X importtime lists every module imported until the worker exits; with stdin at EOF
    # it exits right after its ready frame. (No --forward-logs: that makes fd 2 a pipe.)
    flags = [f for f in HARNESS_FLAGS if f not in ("--forward-logs", "INFO")]
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "snakeport", *flags, "--vm-pid", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert b"snakeport_ready" in out.stdout[:40]
    lines = out.stderr.decode().splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert {"snakeport._server", "snakeport._dispatch"} <= imported
    assert [m for m in NOT_BEFORE_READY if m in imported] == []


def test_a_worker_with_an_allow_list_imports_it_and_fails_loudly_when_it_cannot() -> None:
    # snakeport._allow is imported only by a worker started with --allow: a broken module
    # ends that worker before its ready frame, with the import error on stderr.
    run = [sys.executable, "-c", "import sys; sys.modules['snakeport._allow'] = None; import snakeport.__main__ as m; m.main()"]
    ok = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"snakeport {snakeport.__version__}")
    broken = subprocess.run([*run, "--allow", "math"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert broken.returncode != 0
    assert broken.stdout == ""  # no frame
    assert "ModuleNotFoundError: import of snakeport._allow halted" in broken.stderr, broken.stderr


def test_an_allow_list_given_to_config_alone_is_checked() -> None:
    from snakeport._server import Config

    assert Config(allow=("math", "json.loads")).allow == ("math", "json.loads")
    with pytest.raises(ValueError, match="_private"):
        Config(allow=("_private",))
