"""Shim for tools that still call ``setup.py``; the metadata lives in setup.cfg.

The one thing setup.cfg cannot declare is the optional C accelerator of the codec,
``snakeport._cetf`` (like ``msgpack._cmsgpack``): ``optional=True`` lets the install go on
without it (no compiler or no Python headers), and ``snakeport.etf`` then runs its
pure-Python codec.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("snakeport._cetf", ["worker/snakeport/_cetf.c"], optional=True),
    ],
)
