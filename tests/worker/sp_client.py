"""A Port-like client of the real worker process, for the worker tests.

Kept out of ``conftest.py`` under a unique module name, so that test modules can import it
without clashing with other ``conftest`` modules of the suite.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from snakeport import etf
from snakeport.types import Atom

__all__ = ["A", "BlobBytes", "PYMODS", "Worker", "worker_env"]

PYMODS = str(Path(__file__).parent / "pymods")


def A(name: str) -> Atom:  # noqa: N802 - reads like Erlang's atom literal
    """Shorthand for an atom."""
    return Atom(name)


class BlobBytes(bytes):
    """The bytes of a blob: array data that travelled after the frame's term."""


def _resolve_blobs(term: Any, tail: memoryview, used: list) -> Any:
    t = type(term)
    if t is tuple:
        if len(term) == 3 and term[0] == "$snakeport_blob" and type(term[0]) is Atom:
            _, offset, size = term
            assert offset + size <= len(tail), f"blob {term} beyond the {len(tail)} bytes after the term"
            used.append((offset, size))
            return BlobBytes(tail[offset : offset + size])
        return tuple(_resolve_blobs(x, tail, used) for x in term)
    if t is list:
        return [_resolve_blobs(x, tail, used) for x in term]
    if t is dict:
        return {k: _resolve_blobs(v, tail, used) for k, v in term.items()}
    return term


def worker_env() -> dict[str, str]:
    """Environment of a worker subprocess: the test modules on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYMODS, env.get("PYTHONPATH", "")) if p)
    return env


class Worker:
    """The real worker as a subprocess, spoken to with {packet, 4} ETF frames.

    Sessions are never created implicitly by the worker: like the harness, the client opens
    its default session ``"s1"`` with ``open_session`` right after the ready frame.

    Args:
        *flags: Extra command line options.
        sessions: Sessions to open at start.
        env: The environment (default: :func:`worker_env`).
    """

    def __init__(self, *flags: str, sessions: tuple[str, ...] = ("s1",), env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snakeport", *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else worker_env(),
            bufsize=0,
        )
        self._next_id = 1
        self.events: list[Any] = []
        self.replies: dict[int, Any] = {}
        self.order: list[int] = []  # reply ids in arrival order
        self.stderr = ""
        self.ready = self.recv_frame()
        for sid in sessions:
            self.ok("open_session", sid, {})

    # --- raw frames

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)

    def send_frame(self, payload: bytes) -> None:
        self.send_raw(struct.pack(">I", len(payload)) + payload)

    def send(self, term: Any) -> None:
        self.send_frame(etf.encode(term))

    def _read_exact(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.proc.stdout.read(left)
            if not chunk:
                raise EOFError(f"worker closed its output; stderr:\n{self.stderr_text()}")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def recv_frame(self) -> Any:
        """The next frame's term; blob terms are replaced by their bytes (:class:`BlobBytes`)."""
        (n,) = struct.unpack(">I", self._read_exact(4))
        frame = self._read_exact(n)
        term, end = etf.decode_prefix(frame)
        if end == len(frame):
            return term
        tail = memoryview(frame)[end:]
        used: list[tuple[int, int]] = []
        term = _resolve_blobs(term, tail, used)
        assert used, f"{len(tail)} bytes after a term without blobs"
        return term

    # --- requests

    def new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def request(self, op: str, *fields: Any) -> int:
        """Send ``{Op, Id, *fields}`` and return the id."""
        rid = self.new_id()
        self.send((A(op), rid, *fields))
        return rid

    def _pump(self) -> None:
        term = self.recv_frame()
        if term[0] == "reply":
            assert term[1] not in self.replies, f"second reply to {term[1]}: {term}"
            self.replies[term[1]] = term
            self.order.append(term[1])
        else:
            self.events.append(term)

    def wait(self, rid: int) -> Any:
        """The reply to ``rid`` (events and other replies are kept)."""
        while rid not in self.replies:
            self._pump()
        return self.replies[rid]

    def wait_event(self, name: str, timeout: float = 10.0, pred=None) -> Any:
        """The first stored or incoming event called ``name`` (matching ``pred``)."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev[1] == name and (pred is None or pred(ev)):
                    self.events.remove(ev)
                    return ev
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} event within {timeout} s; got {self.events}")
            # A ping bounds the wait for the next frame.
            self.wait(self.request("ping"))

    def wait_request(self, name: str = "tool_call", timeout: float = 10.0) -> Any:
        """The first stored or incoming request of the worker (``tool_call``, ``tool_cancel``)."""
        deadline = time.monotonic() + timeout
        while True:
            for term in self.events:
                if term[0] == name:
                    self.events.remove(term)
                    return term
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} within {timeout} s; got {self.events}")
            self._pump()

    def tool_reply(self, call_id: int, status: str, value: Any) -> None:
        """Answer a tool call (not a request: the worker sends no reply)."""
        self.send((A("tool_reply"), call_id, A(status), value))

    def ok(self, op: str, *fields: Any) -> Any:
        reply = self.wait(self.request(op, *fields))
        assert reply[2] == "ok", reply
        return reply[3]

    def error(self, op: str, *fields: Any) -> dict:
        reply = self.wait(self.request(op, *fields))
        assert reply[2] == "error", reply
        return reply[3]

    def call(self, module: str, function: str, args=(), kwargs=None, opts=None, session: str = "s1") -> Any:
        return self.ok("call", session, module, function, list(args), kwargs or {}, opts or {})

    # --- lifetime

    def close(self, timeout: float = 10.0) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            return self.proc.wait(timeout)
        finally:
            self.stderr = self.stderr_text()
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream and not stream.closed:
                stream.close()

    def read_stderr_until(self, *needles: str, timeout: float = 15.0) -> str:
        """What the running worker wrote on stderr, read (a bounded poll of the pipe) until
        it holds every one of ``needles`` and ends a line."""
        import select

        fd = self.proc.stderr.fileno()
        data, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
                text = data.decode(errors="replace")
                if text.endswith("\n") and all(n in text for n in needles):
                    return text
        raise AssertionError(f"not all of {needles!r} on stderr within {timeout} s; got:\n{data.decode(errors='replace')}")

    def stderr_text(self) -> str:
        try:
            if self.proc.poll() is None:
                return "<worker still running>"
            return self.proc.stderr.read().decode(errors="replace")
        except Exception:  # noqa: BLE001
            return "<unreadable>"
