"""The `snakeport` package's own namespace: every public name, and a cheap `import snakeport`.

The harness runs ``python -c "import snakeport"`` to diagnose an interpreter whose worker
failed before its ready frame (and ``mix snakeport.doctor`` does), so importing the package
alone must not pull in the worker's machinery.
"""

from __future__ import annotations

import subprocess
import sys

import snakeport
from snakeport import _context, extensions


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
