"""Fake worker: ready frame, then ``{reply, Id, ok, 3}`` for every request (no decoding).

``open_session`` gets the smallest session info map the harness accepts (its session id
copied from the request).

A ``call`` whose last argument is a large binary (``identity`` of a ``bytes``) is answered
with that binary, sliced out of the request without copying. ``shutdown`` exits.
"""

import sys

# {snakeport_ready, 1, #{}}
READY = bytes([131, 104, 3, 119, 15]) + b"snakeport_ready" + bytes([97, 1, 116, 0, 0, 0, 0])
REPLY_OK = bytes([131, 104, 4, 119, 5]) + b"reply"
THREE = bytes([119, 2]) + b"ok" + bytes([97, 3])
# ...[{'$snakeport_bytes', Bin}], #{}, #{}}: after the binary come 106, then two empty maps.
TRAILER = 11
ID_SIZES = {97: 2, 98: 5}


def atom(name):
    return bytes([119, len(name)]) + name


def session_info(data, at):
    """``ok`` and ``#{session => S, refs => 0, max_refs => 10000, ttl_seconds => 3600}``,
    ``S`` the binary at ``at`` (the request's session)."""
    size = int.from_bytes(data[at + 1 : at + 5], "big")
    session = bytes(data[at : at + 5 + size])
    return [
        atom(b"ok"),
        bytes([116, 0, 0, 0, 4]),
        atom(b"session"),
        session,
        atom(b"refs") + bytes([97, 0]),
        atom(b"max_refs") + bytes([98]) + (10000).to_bytes(4, "big"),
        atom(b"ttl_seconds") + bytes([98]) + (3600).to_bytes(4, "big"),
    ]


def frame(*parts):
    size = sum(len(p) for p in parts)
    return [size.to_bytes(4, "big"), *parts]


def main():
    read = sys.stdin.buffer.read
    out = sys.stdout.buffer
    out.write(b"".join(frame(READY)))
    out.flush()
    while True:
        header = read(4)
        if len(header) < 4:
            return
        data = memoryview(read(int.from_bytes(header, "big")))
        # 131, 104, Arity, atom tag, length (1 or 2 bytes), Op, Id...
        if data[3] in (115, 119):
            op_len, at = data[4], 5
        else:  # 100, 118
            op_len, at = int.from_bytes(data[4:6], "big"), 6
        op = bytes(data[at : at + op_len])
        at += op_len
        id_bytes = data[at : at + ID_SIZES.get(data[at], 3 + data[at + 1])]
        if op == b"shutdown":
            return
        value = [THREE]
        if op == b"open_session":
            value = session_info(data, at + len(id_bytes))
        elif len(data) > 65536:  # identity(bytes): echo the binary
            for prefix in range(300):
                size = len(data) - TRAILER - 5 - prefix
                start = len(data) - TRAILER - size
                if data[start - 5] == 109 and int.from_bytes(data[start - 4 : start], "big") == size:
                    value = [bytes([119, 2]) + b"ok", data[start - 5 : start + size]]
                    break
        out.writelines(frame(REPLY_OK, id_bytes, *value))
        out.flush()


if __name__ == "__main__":
    main()
