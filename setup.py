"""Shim for tools that still call ``setup.py``; the metadata lives in setup.cfg.

The one thing setup.cfg cannot declare are the optional C extensions: the accelerator of
the codec, ``snakeport._cetf`` (like ``msgpack._cmsgpack``), and the C lane of the common
call, ``snakeport._clane`` (see ``snakeport._lane``): ``optional=True`` lets the install go
on without them (no compiler or no Python headers), and the worker then runs its pure-Python
codec and its general call path.
"""

from setuptools import Extension, setup

#: The C entry points of _cetf that _clane calls (a header both include).
API = "worker/snakeport/_cetf_api.h"

setup(
    ext_modules=[
        Extension("snakeport._cetf", ["worker/snakeport/_cetf.c"], depends=[API], optional=True),
        Extension("snakeport._clane", ["worker/snakeport/_clane.c"], depends=[API], optional=True),
    ],
)
