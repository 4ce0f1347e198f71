"""Fixtures of the codec tests: one real Erlang VM per test session; both codec paths.

Every test module here runs twice, once with the C accelerator (``snakeport._cetf``) and
once with the pure-Python codec (the autouse, module-scoped ``codec_path`` fixture, ids
``[c]`` and ``[python]``), unless it sets ``BOTH_CODEC_PATHS = False`` (the tests that
compare the two paths switch themselves). Without the extension (not built, or
``SNAKEPORT_PURE_PYTHON=1``) only ``[python]`` runs; ``test_etf_accel.py`` then fails unless
the variable was set on purpose.

The ``erl`` fixture starts ``erl -noshell -noinput`` running a small loop that reads
``{packet, 4}`` frames from its stdin (``open_port({fd, 0, 1}, ...)``) and answers each on
stdout. The command format is deliberately not ETF (so a codec bug cannot corrupt the test
channel): ``<<NArgs:8, (<<Len:32, Arg/binary>>)*NArgs, Source/binary>>``. The VM evaluates
``Source`` (Erlang expressions, UTF-8) with the variable ``Args`` bound to the list of
binaries and replies ``<<0, Result/binary>>`` when the result is a binary,
``<<2, (term_to_binary(Result))/binary>>`` otherwise, or ``<<1, Text/binary>>`` on error.
"""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess
from collections.abc import Iterator

import pytest
from snakeport import etf

_ERL_LOOP = r"""
logger:remove_handler(default),
process_flag(trap_exit, true),
Port = open_port({fd, 0, 1}, [{packet, 4}, binary, eof]),
SplitArgs = fun Split(0, Rest, Acc) -> {lists:reverse(Acc), Rest};
                Split(N, <<L:32, B:L/binary, Rest/binary>>, Acc) -> Split(N - 1, Rest, [B | Acc])
            end,
Eval = fun(Src, Args) ->
    {ok, Tokens, _} = erl_scan:string(unicode:characters_to_list(Src)),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    Bindings = erl_eval:add_binding('Args', Args, erl_eval:new_bindings()),
    {value, Value, _} = erl_eval:exprs(Exprs, Bindings),
    Value
end,
Loop = fun Loop() ->
    receive
        {Port, {data, <<N:8, Rest/binary>>}} ->
            Reply = try
                {Args, Src} = SplitArgs(N, Rest, []),
                case Eval(Src, Args) of
                    V when is_binary(V) -> <<0, V/binary>>;
                    V -> <<2, (term_to_binary(V))/binary>>
                end
            catch Class:Reason:Stack ->
                Text = io_lib:format("~p:~p~n~p", [Class, Reason, Stack]),
                <<1, (unicode:characters_to_binary(Text))/binary>>
            end,
            Port ! {self(), {command, Reply}},
            Loop();
        {Port, eof} -> erlang:halt(0);
        {'EXIT', Port, _} -> erlang:halt(0);
        _ -> Loop()
    end
end,
Loop().
"""


class ErlangError(Exception):
    """The helper VM raised while evaluating a command."""


class ErlHelper:
    """A running ``erl`` helper process; see the module docstring for the protocol."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self._stdin = proc.stdin
        self._stdout = proc.stdout

    def _read_exact(self, n: int, timeout: float) -> bytes:
        chunks = []
        fd = self._stdout.fileno()
        while n:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise TimeoutError("the erl helper did not answer in time")
            chunk = os.read(fd, n)
            if not chunk:
                raise EOFError(f"the erl helper exited (status {self._proc.poll()})")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def call(self, source: str, *args: bytes, timeout: float = 30.0) -> bytes:
        """Evaluate ``source`` with ``Args`` bound to ``args``; return the binary result.

        Raises:
            ErlangError: The VM raised, or the result is not a binary.
        """
        payload = bytearray([len(args)])
        for arg in args:
            payload += struct.pack(">I", len(arg)) + arg
        payload += source.encode("utf-8")
        self._stdin.write(struct.pack(">I", len(payload)) + payload)
        self._stdin.flush()
        (size,) = struct.unpack(">I", self._read_exact(4, timeout))
        reply = self._read_exact(size, timeout)
        status, body = reply[0], reply[1:]
        if status == 0:
            return body
        if status == 1:
            raise ErlangError(body.decode("utf-8", "replace"))
        raise ErlangError(f"expected a binary result from {source!r}, got term bytes {body!r}")

    def term(self, expression: str) -> bytes:
        """``term_to_binary(Expression)``: the VM's exact bytes for a term."""
        return self.call(f"term_to_binary({expression}).")

    def roundtrip(self, data: bytes) -> bytes:
        """``term_to_binary(binary_to_term(Data))``."""
        return self.call("[B] = Args, term_to_binary(binary_to_term(B)).", data)

    def equal(self, a: bytes, b: bytes) -> bool:
        """``binary_to_term(A) =:= binary_to_term(B)``."""
        result = self.call(
            "[A, B] = Args, case binary_to_term(A) =:= binary_to_term(B) of true -> <<1>>; false -> <<0>> end.",
            a,
            b,
        )
        return result == b"\x01"

    def equal_expr(self, data: bytes, expression: str) -> bool:
        """``binary_to_term(Data) =:= (Expression)``."""
        result = self.call(
            f"[B] = Args, case binary_to_term(B) =:= ({expression}) of true -> <<1>>; false -> <<0>> end.",
            data,
        )
        return result == b"\x01"

    def accepts(self, data: bytes) -> bool:
        """Whether ``binary_to_term(Data)`` succeeds."""
        result = self.call(
            "[B] = Args, try binary_to_term(B) of _ -> <<1>> catch error:badarg -> <<0>> end.",
            data,
        )
        return result == b"\x01"

    def close(self) -> None:
        """Close stdin (the loop halts on EOF) and reap the process."""
        try:
            self._stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@pytest.fixture(scope="session")
def erl() -> Iterator[ErlHelper]:
    """One Erlang VM helper for the whole session; fails (never skips) without ``erl``."""
    exe = shutil.which("erl")
    if exe is None:
        pytest.fail("the codec tests need Erlang/OTP: `erl` is not on PATH", pytrace=False)
    proc = subprocess.Popen(
        [exe, "-noshell", "-noinput", "-eval", _ERL_LOOP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    helper = ErlHelper(proc)
    try:
        if helper.call("<<\"ready\">>.", timeout=60) != b"ready":
            pytest.fail("the erl helper answered its first command wrongly", pytrace=False)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    yield helper
    helper.close()


#: The implementations a module runs against: the C accelerator when it is importable.
CODEC_PATHS = ["c", "python"] if etf._cetf is not None else ["python"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test module of this directory against both codec paths (see above)."""
    if "codec_path" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_CODEC_PATHS", True):
        metafunc.parametrize("codec_path", CODEC_PATHS, indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def codec_path(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Switch ``snakeport.etf`` to the C (``"c"``) or pure-Python (``"python"``) codec."""
    path = getattr(request, "param", None)
    if path is None:
        yield None
        return
    previous = etf._set_accelerated(path == "c")
    try:
        yield path
    finally:
        etf._set_accelerated(previous)
