"""The real worker process, spoken to with real {packet, 4} ETF frames over pipes."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from sp_client import A, worker_env

from snakeport import _lane, etf

REF = A("$snakeport_ref")


def reason(err: dict) -> str:
    return err[A("reason")]


def wait_running(path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.005)


# ------------------------------------------------------------------------- CLI


def test_help_documents_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "snakeport", "--help"], capture_output=True, text=True, check=True).stdout
    for option in [
        "--max-frame-bytes",
        "--threads",
        "--default-max-refs",
        "--default-ttl-seconds",
        "--sweep-interval",
        "--max-tombstones",
        "--log-level",
        "--max-depth",
        "--spin-us",
    ]:
        assert option in out
    assert "268435456" in out and "WARNING" in out


def test_bad_option_fails_before_any_frame() -> None:
    proc = subprocess.run([sys.executable, "-m", "snakeport", "--threads", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "" and "--threads" in proc.stderr


# ----------------------------------------------------------------------- basics


def test_ready_frame(make_worker) -> None:
    w = make_worker("--threads", "2", "--default-max-refs", "7", "--default-ttl-seconds", "9", "--max-frame-bytes", "123456")
    tag, version, info = w.ready
    assert (tag, version) == ("snakeport_ready", 1)
    assert info == {
        A("pid"): w.proc.pid,
        A("python"): ".".join(map(str, sys.version_info[:3])),
        A("snakeport"): __import__("snakeport").__version__,
        A("max_frame_bytes"): 123456,
        A("threads"): 2,
        A("default_max_refs"): 7,
        A("default_ttl_seconds"): 9,
    }


def test_stdlib_calls_and_refs(worker) -> None:
    assert worker.call("operator", "add", [2, 40]) == 42
    assert worker.call("math", "sqrt", [2.25]) == 1.5
    counter = worker.call("collections", "Counter", ["abracadabra"])
    assert counter[0] == REF and counter[1] == "s1" and counter[3] == "collections.Counter"
    assert worker.ok("method", "s1", counter, "most_common", [2], {}, {}) == [("a", 5), ("b", 2)]
    sio = worker.call("io", "StringIO", ["hello"])
    assert worker.ok("method", "s1", sio, "write", [" world"], {}, {}) == 6
    assert worker.ok("method", "s1", sio, "getvalue", [], {}, {}) == " world"
    assert worker.ok("getattr", "s1", (A("module"), "math"), "pi", {}) == pytest.approx(3.141592653589793)
    box = worker.call("sp_testmod", "Box", [1])
    assert worker.ok("setattr", "s1", box, "value", {"k": [1, 2]}, {}) is None
    assert worker.ok("getattr", "s1", box, "value", {}) == {"k": [1, 2]}
    assert worker.call("sp_testmod", "kinds", [(A("$snakeport_bytes"), "x"), (A("$snakeport_set"), [1])]) == ["bytes", "set"]
    assert worker.call("builtins", "frozenset", [[3]]) == (A("$snakeport_set"), [3])


def test_session_isolation_release_and_info(worker) -> None:
    info = worker.ok("open_session", "a", {A("tags"): {A("owner"): "test"}, A("ttl_seconds"): 100})
    assert info[A("session")] == "a" and info[A("refs")] == 0 and info[A("tags")] == {A("owner"): "test"}
    worker.ok("open_session", "b", {})
    box = worker.call("sp_testmod", "Box", [5], session="a")
    assert reason(worker.error("method", "b", box, "get", [], {}, {})) == "session_mismatch"
    assert reason(worker.error("call", "b", "sp_testmod", "identity", [box], {}, {})) == "session_mismatch"
    assert worker.ok("method", "a", box, "get", [], {}, {}) == 5
    info = worker.ok("session_info", "a")
    assert info[A("refs")] == 1 and info[A("overflow")] == "error" and info[A("last_access")] >= info[A("created_at")]
    assert worker.ok("release_ref", "a", box) == {A("released"): True}
    assert worker.ok("release_ref", "a", box) == {A("released"): False}
    err = worker.error("method", "a", box, "get", [], {}, {})
    assert reason(err) == "ref_released" and err[A("details")][A("cause")] == "released"
    worker.call("sp_testmod", "boxes", [3], session="a")
    stats = worker.ok("stats")
    assert stats[A("sessions")] == 3 and stats[A("refs")] == 3 and stats[A("pid")] == worker.proc.pid  # s1, a, b
    assert stats[A("rss_bytes")] > 0 and stats[A("uptime_ms")] >= 0 and stats[A("requests")] >= 10
    assert stats[A("fast_path")] is _lane.available()  # (one thread: the C lane, where built)
    assert worker.ok("release_session", "a") == {A("released"): 3}
    assert reason(worker.error("session_info", "a")) == "session_not_found"
    assert worker.ok("stats")[A("refs")] == 0


def test_release_session_crossing_a_call_creates_nothing(worker) -> None:
    worker.call("sp_testmod", "boxes", [3])
    # The harness releases the session while a call naming it is on the wire: the call
    # arrives after release_session and fails instead of re-creating the session.
    release = worker.request("release_session", "s1")
    call = worker.request("call", "s1", "sp_testmod", "Box", [1], {}, {})
    assert worker.wait(release)[3] == {A("released"): 3}
    err = worker.wait(call)[3]
    assert reason(err) == "session_not_found"
    assert err[A("details")] == {A("session"): "s1", A("cause"): A("session_released")}
    for fields in [("getattr", "s1", (A("module"), "math"), "pi", {}), ("call", "never", "math", "sqrt", [4], {}, {})]:
        assert reason(worker.error(*fields)) == "session_not_found"
    stats = worker.ok("stats")
    assert (stats[A("sessions")], stats[A("refs")]) == (0, 0)
    assert reason(worker.error("session_info", "s1")) == "session_not_found"


def test_python_exception_reply(worker) -> None:
    err = worker.error("call", "s1", "sp_testmod", "fail", ["kaput"], {}, {})
    assert reason(err) == "python_error"
    assert err[A("type")] == "builtins.ValueError" and err[A("message")] == "kaput"
    assert err[A("traceback")][-1] == "ValueError: kaput"
    assert any("sp_testmod.py" in line for line in err[A("traceback")])
    err = worker.error("call", "s1", "operator", "truediv", [1, 0], {}, {})
    assert err[A("type")] == "builtins.ZeroDivisionError"
    assert reason(worker.error("call", "s1", "no_such_mod", "f", [], {}, {})) == "import_error"
    assert reason(worker.error("call", "s1", "math", "nope", [], {}, {})) == "attribute_error"


def test_ttl_expiry_emits_refs_pruned(make_worker) -> None:
    w = make_worker("--sweep-interval", "0.05")
    w.ok("open_session", "t", {A("ttl_seconds"): 0.2})
    box = w.call("sp_testmod", "Box", [1], session="t")
    event = w.wait_event("refs_pruned", timeout=10)
    assert event == (A("event"), A("refs_pruned"), {A("count"): 1}, {A("session"): "t", A("reason"): A("ttl"), A("ref_ids"): [box[2]]})
    err = w.error("method", "t", box, "get", [], {}, {})
    assert reason(err) == "ref_released" and err[A("details")][A("cause")] == "ttl"


def test_idle_worker_prunes_without_requests(make_worker) -> None:
    w = make_worker("--sweep-interval", "0.05", "--default-ttl-seconds", "0.1")
    box = w.call("sp_testmod", "Box", [1])
    # No request until the event arrives: the sweep runs on its own.
    event = w.recv_frame()
    assert event[1] == "refs_pruned" and event[3][A("ref_ids")] == [box[2]]


def test_overflow_policies(worker) -> None:
    worker.ok("open_session", "e", {A("max_refs"): 2})
    kept = worker.call("sp_testmod", "boxes", [2], session="e")
    err = worker.error("call", "e", "sp_testmod", "boxes", [1], {}, {})
    assert reason(err) == "max_refs_exceeded" and err[A("details")] == {A("limit"): 2, A("refs"): 2}
    assert [worker.ok("method", "e", r, "get", [], {}, {}) for r in kept] == [0, 1]

    worker.ok("open_session", "l", {A("max_refs"): 2, A("overflow"): A("evict_lru")})
    first = worker.call("sp_testmod", "boxes", [2], session="l")
    worker.ok("method", "l", first[0], "get", [], {}, {})  # first[1] is now the LRU ref
    newer = worker.call("sp_testmod", "Box", [9], session="l")
    event = worker.wait_event("refs_evicted")
    assert event[2] == {A("count"): 1}
    assert event[3] == {A("session"): "l", A("reason"): A("overflow"), A("ref_ids"): [first[1][2]]}
    err = worker.error("method", "l", first[1], "get", [], {}, {})
    assert reason(err) == "ref_released" and err[A("details")][A("cause")] == "evicted"
    assert worker.ok("method", "l", newer, "get", [], {}, {}) == 9


def test_evict_lru_never_evicts_a_ref_the_reply_returns(worker) -> None:
    # max_refs 2, refs 1 and 2 held, a call returning [object of ref 1, new, new]: the reply
    # cannot hold 3 refs, and evicting ref 1 (the old behaviour: refs 2 and 1 evicted, then
    # ref 1 returned dead) must not happen. Finding ref 1 and storing the new ones is one
    # step of the session table, which pins what the reply returns.
    worker.ok("open_session", "p", {A("max_refs"): 2, A("overflow"): A("evict_lru")})
    held = worker.call("sp_testmod", "boxes", [2], session="p")
    err = worker.error("call", "p", "sp_testmod", "with_boxes", [held[0], 2], {}, {})
    assert reason(err) == "max_refs_exceeded" and err[A("details")] == {A("limit"): 2, A("refs"): 2}
    assert [worker.ok("method", "p", r, "get", [], {}, {}) for r in held] == [0, 1]  # nothing evicted
    # When the reply fits, the LRU ref that it does not return is the one evicted.
    worker.ok("method", "p", held[1], "get", [], {}, {})  # held[0] is now the LRU ref
    out = worker.call("sp_testmod", "with_boxes", [held[0], 1], session="p")
    assert out[0] == held[0]
    event = worker.wait_event("refs_evicted")
    assert event[3][A("ref_ids")] == [held[1][2]]
    assert worker.ok("method", "p", out[0], "get", [], {}, {}) == 0
    assert worker.ok("session_info", "p")[A("refs")] == 2
    assert not [e for e in worker.events if e[1] == "refs_evicted"]


# --------------------------------------------------------------------- channel


def test_stdout_writes_inside_a_call_leave_the_channel_intact(worker) -> None:
    assert worker.call("sp_testmod", "noisy") == "quiet"
    assert worker.call("sp_testmod", "read_stdin") == ""
    assert worker.ok("ping") == "pong"
    assert worker.call("operator", "add", [1, 1]) == 2
    assert worker.close() == 0
    for text in ["print() from a call", "sys.stdout.write", "os.write(1) from a call", "subprocess echo", "True"]:
        assert text in worker.stderr


def test_protocol_pipes_are_grown(worker) -> None:
    max_size = int(open("/proc/sys/fs/pipe-max-size").read())
    if max_size < 1 << 20:
        pytest.fail(f"pipe-max-size is {max_size}; cannot check the 1 MiB pipes")
    f_getpipe_sz = 1032
    assert worker.ok("ping") == "pong"  # the worker has set up its pipes
    assert fcntl.fcntl(worker.proc.stdin.fileno(), f_getpipe_sz) == 1 << 20
    assert fcntl.fcntl(worker.proc.stdout.fileno(), f_getpipe_sz) == 1 << 20


# ------------------------------------------------------------------ bad input


def test_garbage_frames_get_errors_and_the_worker_keeps_serving(worker) -> None:
    # Not ETF at all: no id to attribute.
    worker.send_frame(b"\x00\x01garbage")
    event = worker.wait_event("protocol_error")
    assert event[3][A("reason")] == "decode_error" and event[3][A("message")]
    # An empty frame.
    worker.send_frame(b"")
    assert worker.wait_event("protocol_error")[3][A("reason")] == "decode_error"
    # A truncated term whose {Op, Id} can be read.
    data = etf.encode((A("call"), 77, "s1", "sp_testmod", "identity", [list(range(100))], {}, {}))
    worker.send_frame(data[:-10])
    err = worker.wait(77)[3]
    assert reason(err) == "decode_error"
    # A valid term that is not a tuple.
    worker.send(["not", "a", "request"])
    assert worker.wait_event("protocol_error")[3][A("reason")] == "bad_request"
    # Unknown operation, wrong arity, wrong types.
    assert reason(worker.error("frobnicate")) == "bad_request"
    assert reason(worker.error("call", "s1", "math")) == "bad_request"
    assert reason(worker.error("call", "s1", "math", "sqrt", "notalist", {}, {})) == "bad_request"
    # Dead and never-issued refs.
    assert reason(worker.error("method", "s1", (REF, "s1", 999, "x.Y"), "get", [], {}, {})) == "ref_not_found"
    assert worker.call("operator", "add", [2, 2]) == 4


def test_oversized_frames_are_skipped(make_worker) -> None:
    w = make_worker("--max-frame-bytes", "1000")
    w.send((A("call"), 5, "s1", "sp_testmod", "identity", [b"x" * 5000], {}, {}))
    err = w.wait(5)[3]
    assert reason(err) == "frame_too_large" and "1000" in err[A("message")]
    w.send_frame(b"\xff" * 3000)
    assert w.wait_event("protocol_error")[3][A("reason")] == "frame_too_large"
    assert w.call("sp_testmod", "identity", ["y" * 900]) == "y" * 900


@pytest.mark.parametrize("size", [1 << 20, 64 << 20])
def test_large_binaries_round_trip(worker, size) -> None:
    blob = os.urandom(size)
    rid = worker.request("call", "s1", "sp_testmod", "identity", [blob], {}, {})
    reply = worker.wait(rid)
    assert reply[2] == "ok" and reply[3] == blob
    assert worker.call("sp_testmod", "size", [blob[:1000]]) == 1000


@pytest.mark.parametrize("spin", ["0", "200", "1000000"])
def test_the_reader_spins_only_after_frames_then_sleeps(make_worker, spin) -> None:
    w = make_worker("--spin-us", spin)
    for i in range(100):
        assert w.call("operator", "add", [i, 1]) == i + 1
    # Idle (even after a one-second spin window): the process stops using CPU. Bounded poll:
    # a window of 0.2 s with less than 20 ms of CPU time (sweep and watchdog wake-ups).
    proc = psutil.Process(w.proc.pid)
    deadline = time.monotonic() + 10.0
    while True:
        before = sum(proc.cpu_times()[:2])
        time.sleep(0.2)
        used = sum(proc.cpu_times()[:2]) - before
        if used < 0.02:
            break
        assert time.monotonic() < deadline, f"the idle worker keeps using CPU ({used:.3f} s per 0.2 s)"
    assert w.call("operator", "add", [1, 2]) == 3


def test_pipelined_requests_all_get_one_reply(worker) -> None:
    ids = [worker.request("call", "s1", "operator", "mul", [i, 2], {}, {}) for i in range(200)]
    ids += [worker.request("ping") for _ in range(50)]
    for i, rid in enumerate(ids[:200]):
        assert worker.wait(rid)[3] == 2 * i
    for rid in ids[200:]:
        assert worker.wait(rid)[3] == "pong"


# ---------------------------------------------------------------- concurrency


def test_control_requests_are_answered_during_a_long_call(worker) -> None:
    call = worker.request("call", "s1", "sp_testmod", "sleep", [5], {}, {})
    ping = worker.request("ping")
    assert worker.wait(ping)[3] == "pong"
    stats = worker.wait(worker.request("stats"))[3]
    assert stats[A("in_flight")] == 1
    info = worker.wait(worker.request("open_session", "other", {}))[3]
    assert info[A("session")] == "other"
    assert call not in worker.replies  # the ping overtook the running call


def test_cancel_running_call(worker, tmp_path) -> None:
    flag = str(tmp_path / "running")
    call = worker.request("call", "s1", "sp_testmod", "spin_flagged", [flag, 60], {}, {})
    wait_running(flag)
    assert worker.ok("cancel", call) == {A("cancelled"): True}
    err = worker.wait(call)[3]
    assert reason(err) == "cancelled"
    assert worker.ok("cancel", call) == {A("cancelled"): False}
    assert worker.call("operator", "add", [1, 2]) == 3  # the executor thread survived


def test_cancel_queued_call(worker, tmp_path) -> None:
    flag = str(tmp_path / "running")
    running = worker.request("call", "s1", "sp_testmod", "spin_flagged", [flag, 60], {}, {})
    queued = worker.request("call", "s1", "operator", "add", [1, 2], {}, {})
    wait_running(flag)
    assert worker.ok("cancel", queued) == {A("cancelled"): True}
    assert reason(worker.wait(queued)[3]) == "cancelled"
    assert running not in worker.replies
    worker.ok("cancel", running)
    assert reason(worker.wait(running)[3]) == "cancelled"
    assert worker.call("operator", "add", [1, 2]) == 3


def test_threads_run_calls_concurrently(make_worker, tmp_path) -> None:
    w = make_worker("--threads", "2")
    flag = str(tmp_path / "running")
    spinning = w.request("call", "s1", "sp_testmod", "spin_flagged", [flag, 60], {}, {})
    wait_running(flag)
    assert w.call("operator", "add", [20, 22]) == 42  # the second thread is free
    w.ok("cancel", spinning)
    assert reason(w.wait(spinning)[3]) == "cancelled"


# -------------------------------------------------------------------- lifetime


def test_shutdown_cancels_running_calls_and_exits_0(worker, tmp_path) -> None:
    flag = str(tmp_path / "running")
    call = worker.request("call", "s1", "sp_testmod", "spin_flagged", [flag, 60], {}, {})
    wait_running(flag)
    assert worker.ok("shutdown") == "ok"
    assert reason(worker.wait(call)[3]) == "cancelled"
    assert worker.proc.wait(10) == 0


def test_stdin_eof_exits_0_even_with_a_call_running(worker) -> None:
    call = worker.request("call", "s1", "sp_testmod", "sleep", [30], {}, {})
    assert worker.ok("ping") == "pong"
    started = time.monotonic()
    assert worker.close(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert call not in worker.replies


def test_closed_protocol_output_ends_the_worker_quietly(make_worker) -> None:
    # The VM halted: the worker's next frame hits a closed pipe. A normal end of life: status
    # 0 and nothing on stderr at the default log level (INFO shows it).
    for flags, expected in [((), ""), (("--log-level", "info"), "protocol output closed")]:
        w = make_worker(*flags)
        assert w.ok("ping") == "pong"
        w.proc.stdout.close()
        w.send((A("ping"), 99))
        assert w.proc.wait(10) == 0
        stderr = w.stderr_text()
        if expected:
            assert expected in stderr and "INFO" in stderr and "WARNING" not in stderr, stderr
        else:
            assert stderr == ""


def test_closed_protocol_input_ends_the_worker_quietly(worker) -> None:
    assert worker.call("operator", "add", [1, 2]) == 3
    assert worker.close() == 0
    assert worker.stderr == ""


_PARENT = r"""
import subprocess, sys, time
with open(sys.argv[2], "wb") as err:
    worker = subprocess.Popen(
        [sys.executable, "-m", "snakeport", *sys.argv[3:]], stdin=0, stdout=int(sys.argv[1]), stderr=err
    )
print(worker.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_worker_exits_when_its_parent_dies(tmp_path, level) -> None:
    # The test keeps both protocol pipes open, so only the watchdog can end the worker. The
    # VM being gone is a normal end of life: nothing on stderr at the default level.
    stderr_path = tmp_path / "stderr"
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(out_w), str(stderr_path), "--log-level", level],
        stdin=in_r,
        stdout=subprocess.PIPE,
        env=worker_env(),
        pass_fds=(out_w,),
    )
    os.close(in_r)
    try:
        worker_pid = int(parent.stdout.readline())
        # Wait for the ready frame: the worker is up.
        header = os.read(out_r, 4)
        assert len(header) == 4
        proc = psutil.Process(worker_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while True:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            assert time.monotonic() < deadline, "the worker outlived its parent"
            time.sleep(0.02)
        stderr = stderr_path.read_text()
        if level == "INFO":
            assert "WARNING" not in stderr, stderr
            if not sys.platform.startswith("linux"):  # there the kernel's SIGKILL comes first
                assert "INFO" in stderr and "parent process" in stderr, stderr
        else:
            assert stderr == ""
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        for fd in (in_w, out_r, out_w):
            os.close(fd)


def test_many_control_requests_during_a_gil_holding_call(worker, tmp_path) -> None:
    flag = str(tmp_path / "running")
    call = worker.request("call", "s1", "sp_testmod", "spin_flagged", [flag, 60], {}, {})
    wait_running(flag)
    for _ in range(20):
        assert worker.ok("ping") == "pong"
    assert worker.ok("stats")[A("in_flight")] == 1
    assert call not in worker.replies
    worker.ok("cancel", call)
    assert reason(worker.wait(call)[3]) == "cancelled"


def test_calls_never_run_on_the_main_thread(worker, tmp_path) -> None:
    assert worker.call("sp_testmod", "on_main_thread") is False
    flag = str(tmp_path / "running")
    call = worker.request("call", "s1", "sp_testmod", "spin_flagged", [flag, 60], {}, {})
    wait_running(flag)
    assert worker.ok("ping") == "pong"  # the stand-by thread reads now
    worker.ok("cancel", call)
    assert reason(worker.wait(call)[3]) == "cancelled"
    assert worker.call("sp_testmod", "on_main_thread") is False


def test_logs_go_to_stderr_with_levels(make_worker) -> None:
    w = make_worker("--log-level", "info")
    assert w.ok("ping") == "pong"
    assert w.close() == 0
    assert "INFO" in w.stderr and "protocol input closed" in w.stderr


def test_compressed_requests_are_accepted(worker) -> None:
    rid = worker.new_id()
    term = (A("call"), rid, "s1", "sp_testmod", "identity", ["z" * 10_000], {}, {})
    worker.send_frame(etf.encode(term, compressed=6))
    assert worker.wait(rid)[3] == "z" * 10_000


def test_random_and_truncated_frames_never_stop_the_worker(worker) -> None:
    import random

    rng = random.Random(1234)
    valid = etf.encode((A("call"), 5, "s1", "sp_testmod", "identity", [[1, 2.5, "x", {"k": (1, 2)}]], {}, {}))
    for i in range(300):
        kind = i % 3
        if kind == 0:
            frame = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        elif kind == 1:
            frame = valid[: rng.randrange(1, len(valid))]
        else:
            frame = bytearray(valid)
            frame[rng.randrange(1, len(frame))] = rng.randrange(256)
            frame = bytes(frame)
        worker.send_frame(frame)
    # Read raw from here on: the mutated frames may carry any ids, even repeated ones, and a
    # mutated frame that is still a valid call may reply after later requests.
    def raw_until(rid: int) -> tuple[object, int]:
        others = 0
        while True:
            term = worker.recv_frame()
            assert term[0] in ("reply", "event"), term
            if term[0] == "reply" and term[1] == rid:
                return term[3], others
            others += 1

    worker.send((A("ping"), 10_000))
    value, answered = raw_until(10_000)
    assert value == "pong"
    assert answered >= 250  # nearly every bad frame was answered (a few mutations stay valid)
    worker.send((A("call"), 10_001, "s1", "operator", "add", [1, 2], {}, {}))
    assert raw_until(10_001)[0] == 3
    assert worker.proc.poll() is None


def test_unencodable_result_releases_its_new_refs(worker) -> None:
    err = worker.error("call", "s1", "sp_testmod", "box_and_surrogate", [], {}, {})
    assert reason(err) == "not_encodable"
    assert worker.ok("stats")[A("refs")] == 0
    assert worker.call("operator", "add", [1, 2]) == 3


@pytest.mark.parametrize("threads", ["1", "2"])
def test_cancel_storm_gives_exactly_one_reply_per_request(make_worker, threads) -> None:
    w = make_worker("--threads", threads)
    calls, cancels = [], []
    for i in range(150):
        rid = w.request("call", "s1", "sp_testmod", "spin", [(0, 0.002, 0.02)[i % 3]], {}, {})
        calls.append(rid)
        if i % 2:
            cancels.append(w.request("cancel", rid))
    outcomes = set()
    for rid in calls:
        reply = w.wait(rid)
        if reply[2] == "ok":
            outcomes.add("ok")
        else:
            assert reason(reply[3]) == "cancelled", reply
            outcomes.add("cancelled")
    for rid in cancels:
        assert w.wait(rid)[2] == "ok"
    assert outcomes == {"ok", "cancelled"}
    assert w.ok("stats")[A("in_flight")] == 0
    assert w.call("operator", "add", [1, 2]) == 3  # every thread survived
    assert sorted(w.replies) == list(range(1, w._next_id))  # one reply each, none twice


@pytest.mark.parametrize("size", [100 << 10, 1 << 20, 8 << 20])
def test_tagged_terms_resolve_in_frames_larger_than_the_tag_scan(worker, size) -> None:
    # Frames above the codec's 64 KiB tag-scan bound (and above the splitter's buffer, so
    # both the bytes and the bytearray paths): refs, bytes and sets must still resolve,
    # before and after the large binary, with the session checks.
    blob = os.urandom(size)
    box = worker.call("sp_testmod", "Box", [7])
    args = [box, blob, (A("$snakeport_bytes"), "x"), (A("$snakeport_set"), [1]), box]
    assert worker.call("sp_testmod", "kinds", args) == ["Box", "bytes", "bytes", "set", "Box"]
    assert worker.ok("method", "s1", box, "same", [box], {}, {}) is True
    assert worker.call("sp_testmod", "kinds", [blob], {"b": box}) == ["bytes", "b=Box"]
    assert worker.call("sp_testmod", "identity", [[blob, box]]) == [blob, box]
    worker.ok("open_session", "other", {})
    err = worker.error("call", "other", "sp_testmod", "identity", [blob, box], {}, {})
    assert reason(err) == "session_mismatch"
    err = worker.error("call", "s1", "sp_testmod", "identity", [blob, (REF, "s1", 99999, "x.Y")], {}, {})
    assert reason(err) == "ref_not_found"
    err = worker.error("call", "s1", "sp_testmod", "identity", [blob, (A("$snakeport_set"), 5)], {}, {})
    assert reason(err) == "bad_request"


def _raw_reply(w, rid: int, max_depth: int) -> Any:
    """Read frames up to the reply to ``rid``, decoding with a depth limit of our own."""
    while True:
        (n,) = struct.unpack(">I", w._read_exact(4))
        term = etf.decode(w._read_exact(n), max_depth=min(max_depth, etf.MAX_DECODE_DEPTH))
        if term[0] == "reply" and term[1] == rid:
            return term


def _unnest(value: Any) -> tuple[int, Any]:
    """``(levels, innermost)`` of nested one-element lists or $snakeport_set terms."""
    levels = 0
    while True:
        if type(value) is list and len(value) == 1:
            value = value[0]
        elif type(value) is tuple and len(value) == 2 and value[0] == A("$snakeport_set"):
            value = value[1][0]
        else:
            return levels, value
        levels += 1


@pytest.mark.parametrize(
    ("flags", "kind", "n", "depth"),
    [
        ((), "list", 600, 512),
        ((), "list", 513, 512),
        ((), "frozenset", 600, 512),
        (("--max-depth", "3000"), "list", 4000, 3000),
    ],
)
def test_results_nested_deeper_than_max_depth_become_refs_there(make_worker, flags, kind, n, depth) -> None:
    # PROTOCOL.md: containers nested deeper than --max-depth become refs at that point; the
    # reply itself must still encode (a set travels as two levels, {'$snakeport_set', List}).
    w = make_worker(*flags)
    rid = w.request("call", "s1", "sp_testmod", "nest", [n, kind], {}, {})
    reply = _raw_reply(w, rid, 4 * depth + 10)
    assert reply[2] == "ok", reply
    levels, inner = _unnest(reply[3])
    assert levels == depth
    assert inner[0] == REF and inner[3] == ("builtins.list" if kind == "list" else "builtins.frozenset")
    assert w.call("operator", "add", [1, 2]) == 3


def test_refs_resolve_in_arguments_nested_to_max_depth(make_worker) -> None:
    # Decoded arguments may nest to --max-depth; refs deep inside them still resolve.
    w = make_worker("--max-depth", "3000")
    box = w.call("sp_testmod", "Box", [7])
    deep = box
    for _ in range(2900):
        deep = [deep]
    rid = w.new_id()
    w.send_frame(etf.encode((A("call"), rid, "s1", "sp_testmod", "identity", [deep], {}, {}), max_depth=4000))
    reply = _raw_reply(w, rid, 4000)
    assert reply[2] == "ok", reply
    levels, inner = _unnest(reply[3])
    assert levels == 2900 and inner == box


def test_session_tags_come_back_as_they_were_sent(worker) -> None:
    # PROTOCOL.md: tags are any term, kept and returned as is, reserved forms included.
    box = worker.call("sp_testmod", "Box", [1])
    tags = {
        A("b"): (A("$snakeport_bytes"), "x"),
        A("s"): (A("$snakeport_set"), [3, 1, 3]),
        A("nested"): [(A("$snakeport_set"), [(A("$snakeport_bytes"), b"\xfe\xff")])],
        A("ref"): box,
        A("plain"): [b"\xfe\xff", "x"],
    }
    assert worker.ok("open_session", "t", {A("tags"): tags})[A("tags")] == tags
    assert worker.ok("session_info", "t")[A("tags")] == tags


def test_python_errors_with_lone_surrogates_stay_python_errors(worker) -> None:
    # The reason is python_error (PROTOCOL.md), whatever the exception's text holds.
    code = "def f():\n    raise ValueError('bad ' + chr(0xdc80))\nf()"
    err = worker.error("call", "s1", "builtins", "exec", [code], {}, {})
    assert reason(err) == "python_error" and err[A("type")] == "builtins.ValueError"
    assert err[A("message")] == "bad \\udc80"
    assert err[A("traceback")][-1] == "ValueError: bad \\udc80"
