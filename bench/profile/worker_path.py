"""CPU cost of one request inside the worker, without pipes, threads or the VM (profiling aid).

Drives the worker's own pieces (snakeport._server.Server: its splitter, codec, dispatcher,
scheduler and writer) in one thread on the request the harness sends for
``Snakeport.call("operator", "add", [1, 2])`` and prints the µs per request of each stage and of the whole in-process path; the reply frame
goes to a pipe that is drained after every request (that read is timed apart). Uses private
worker APIs: adjust when they change.

    .venv/bin/python bench/profile/worker_path.py
"""

import os
import statistics
import struct
import threading
import timeit

from snakeport import etf
from snakeport._tagged import TagContext, encode_default
from snakeport._server import Config, Server
from snakeport.types import Atom

A = Atom
REQUEST = (A("call"), 7, "auto-1", "operator", "add", [1, 2], {}, {})
OPEN = (A("open_session"), 1, "auto-1", {})
#: term_to_binary({call, 7, <<"auto-1">>, <<"operator">>, <<"add">>, [1, 2], #{}, #{}}), OTP 25.
OTP25_REQUEST = bytes.fromhex(
    "8368086400046361"
    "6c6c61076d000000066175746f2d316d000000086f70657261746f726d00000003616464"
    "6b00020102740000000074000000 00".replace(" ", "")
)


def main() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    server = Server(Config(), in_r, out_w)
    sched = server._sched
    sched.reader = threading.get_ident()
    server._handle(etf.encode(OPEN), [])
    # The bytes OTP 25's term_to_binary gives (atoms as ATOM_EXT, [1, 2] as STRING_EXT),
    # not etf.encode's (SMALL_ATOM_UTF8_EXT): the worker's decoder takes other branches.
    frame = OTP25_REQUEST
    assert etf.decode(frame) == REQUEST
    header = struct.pack(">I", len(frame))
    me = threading.get_ident()
    splitter = server._splitter
    dispatcher = server.dispatcher
    default = encode_default
    reply = (A("reply"), 7, A("ok"), 3)
    reply_frame = struct.pack(">I", len(etf.encode(reply))) + etf.encode(reply)

    def whole() -> None:
        # What _read_frames does for one frame, minus the blocking readv.
        splitter.feed(header + frame)
        out: list = []
        job = server._handle(splitter.next_event(), out)
        splitter.next_event()
        if sched.place(job):
            sched.run_inline(job, me)
        sched.flush_held()  # what _read_frames does once the read's frames are handled
        os.read(out_r, 65536)

    def split() -> None:
        splitter.feed(header + frame)
        splitter.next_event()
        splitter.next_event()

    def decode() -> None:
        etf.decode(frame, tagged=TagContext(), max_depth=512, max_size=1 << 28)

    term = etf.decode(frame, tagged=TagContext())

    def receive_and_run() -> None:
        dispatcher.run_job(dispatcher.receive(term, TagContext()))

    def handle_only() -> None:
        dispatcher.run_job(server._handle(frame, []))

    writer = server._writer
    reply_payload = etf.encode(reply)

    def server_send() -> None:
        server.send([reply])
        os.read(out_r, 65536)

    def writer_send() -> None:
        writer.send([reply_payload])
        os.read(out_r, 65536)

    def encode() -> None:
        etf.encode(reply, default=default)

    def pipe_write_read() -> None:
        os.writev(out_w, [reply_frame[:4], reply_frame[4:]])
        os.read(out_r, 65536)

    def call_only() -> None:
        import operator

        operator.add(1, 2)

    stages = [
        ("whole in-process path (split+decode+dispatch+place+run+encode+writev+drain)", whole),
        ("  FrameSplitter feed/next_event", split),
        ("  etf.decode request (TagContext)", decode),
        ("  Server._handle (decode + Dispatcher.receive) + run_job", handle_only),
        ("  Dispatcher.receive + run_job (includes the call)", receive_and_run),
        ("  Server.send (encode + FrameWriter.send + writev) + read drain", server_send),
        ("  FrameWriter.send (locks, header, writev) + read drain", writer_send),
        ("  etf.encode reply", encode),
        ("  os.writev reply + os.read drain (syscalls)", pipe_write_read),
        ("  operator.add(1, 2) itself", call_only),
    ]
    for name, fn in stages:
        fn()
        timer = timeit.Timer(fn)
        number = 20_000
        runs = [timer.timeit(number) / number * 1e6 for _ in range(7)]
        print(f"{min(runs):7.2f} µs best  {statistics.median(runs):7.2f} µs median   {name}")
    for fd in (in_r, in_w, out_r, out_w):
        os.close(fd)


if __name__ == "__main__":
    main()
