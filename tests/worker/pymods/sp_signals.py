"""Imported by ``--preload`` in the tests (on the worker's main thread): a handler for
``SIGUSR1``, so that the signal interrupts a system call of the thread it is sent to
(``tgkill``) instead of ending the process."""

import signal

signal.signal(signal.SIGUSR1, lambda *_: None)
