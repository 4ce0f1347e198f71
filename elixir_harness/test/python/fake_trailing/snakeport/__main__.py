"""A fake worker: a correct handshake, then crafted reply and event frames.

It reads each request's operation, id and (for ``call``) function name from the frame's
first bytes, and answers a ``call`` according to the function name:

- ``trailing_list``: ``{reply, Id, ok, [1, 2 | 3]}`` then a ``j`` byte: the frame that a
  list grown while it was encoded made (its header said 2 elements, 3 followed), which
  ``binary_to_term/1`` decodes to an improper list, ignoring the last byte;
- ``trailing_int``: ``{reply, Id, ok, 1}`` then one byte;
- ``trailing_binary``: ``{reply, Id, ok, <<"abc">>}`` then one byte (the binary fast path);
- ``trailing_error``: an error reply, then one byte;
- ``trailing_event``: the event ``{event, warning, #{}, #{message => <<"x">>}}`` then one
  byte, then a correct ``{reply, Id, ok, 1}``;
- anything else: ``{reply, Id, ok, <<"exact">>}`` (a correct frame).

``open_session`` gets a correct session info map, other requests ``{reply, Id, ok, ok}``.
"""

import os
import struct
import sys

IN = sys.stdin.buffer
OUT = sys.stdout.buffer


def atom(name):
    data = name.encode()
    return b"w" + bytes([len(data)]) + data


def binary(data):
    return b"m" + struct.pack(">I", len(data)) + data


def integer(n):
    if 0 <= n < 256:
        return b"a" + bytes([n])
    if -(2**31) <= n < 2**31:
        return b"b" + struct.pack(">i", n)
    digits = n.to_bytes((n.bit_length() + 7) // 8, "little")
    return b"n" + bytes([len(digits), 0]) + digits


def small_map(pairs):
    return b"t" + struct.pack(">I", len(pairs)) + b"".join(k + v for k, v in pairs)


def reply(rid, status, value):
    return b"\x83h\x04" + atom("reply") + integer(rid) + atom(status) + value


def send(frame):
    try:
        OUT.write(struct.pack(">I", len(frame)) + frame)
        OUT.flush()
    except BrokenPipeError:
        os._exit(0)


def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = IN.read(n - len(data))
        if not chunk:
            os._exit(0)
        data += chunk
    return data


def parse_request(frame):
    """``(op, id, function or None)`` from a request's first bytes."""
    pos = 1  # version byte
    pos += 2 if frame[pos] == ord("h") else 5  # tuple header
    tag = frame[pos]
    if tag == ord("w"):
        n = frame[pos + 1]
        op, pos = frame[pos + 2 : pos + 2 + n].decode(), pos + 2 + n
    else:  # ATOM_UTF8_EXT / ATOM_EXT
        n = struct.unpack(">H", frame[pos + 1 : pos + 3])[0]
        op, pos = frame[pos + 3 : pos + 3 + n].decode(), pos + 3 + n
    tag = frame[pos]
    if tag == ord("a"):
        rid, pos = frame[pos + 1], pos + 2
    elif tag == ord("b"):
        rid, pos = struct.unpack(">i", frame[pos + 1 : pos + 5])[0], pos + 5
    else:  # SMALL_BIG_EXT
        n = frame[pos + 1]
        rid, pos = int.from_bytes(frame[pos + 3 : pos + 3 + n], "little"), pos + 3 + n
    function = None
    if op == "call":
        fields = []
        for _ in range(3):  # Session, Module, Function: binaries
            assert frame[pos] == ord("m"), frame
            n = struct.unpack(">I", frame[pos + 1 : pos + 5])[0]
            fields.append(frame[pos + 5 : pos + 5 + n])
            pos += 5 + n
        function = fields[2].decode()
    return op, rid, function


def session_info(rid):
    info = small_map(
        [
            (atom("session"), binary(b"s")),
            (atom("refs"), integer(0)),
            (atom("max_refs"), integer(100)),
            (atom("ttl_seconds"), integer(60)),
            (atom("tags"), atom("nil")),
            (atom("overflow"), atom("error")),
            (atom("created_at"), integer(0)),
            (atom("last_access"), integer(0)),
        ]
    )
    return reply(rid, "ok", info)


def answer_call(rid, function):
    if function == "trailing_list":
        # [1, 2 | 3] + "j": a header of 2 elements, 3 elements written, then the nil tail.
        send(reply(rid, "ok", b"l\x00\x00\x00\x02" + integer(1) + integer(2) + integer(3)) + b"j")
    elif function == "trailing_int":
        send(reply(rid, "ok", integer(1)) + b"a")
    elif function == "trailing_binary":
        send(reply(rid, "ok", binary(b"abc")) + b"j")
    elif function == "trailing_error":
        error = small_map(
            [
                (atom("reason"), atom("python_error")),
                (atom("message"), binary(b"boom")),
                (atom("type"), atom("nil")),
                (atom("traceback"), b"j"),
                (atom("details"), small_map([])),
            ]
        )
        send(reply(rid, "error", error) + b"j")
    elif function == "trailing_event":
        event = b"\x83h\x04" + atom("event") + atom("warning") + small_map([]) + small_map([(atom("message"), binary(b"x"))])
        send(event + b"j")
        send(reply(rid, "ok", integer(1)))
    else:
        send(reply(rid, "ok", binary(b"exact")))


def main():
    info = small_map([(atom("pid"), integer(os.getpid())), (atom("max_frame_bytes"), integer(1 << 20))])
    send(b"\x83h\x03" + atom("snakeport_ready") + integer(1) + info)
    while True:
        (n,) = struct.unpack(">I", read_exact(4))
        op, rid, function = parse_request(read_exact(n))
        if op == "open_session" or op == "session_info":
            send(session_info(rid))
        elif op == "call":
            answer_call(rid, function)
        else:
            send(reply(rid, "ok", atom("ok")))


main()
