import struct
import sys

# {snakeport_ready, 2, #{}} in the external term format.
term = b"\x83h\x03w\x0fsnakeport_readya\x02t\x00\x00\x00\x00"
sys.stdout.buffer.write(struct.pack(">I", len(term)) + term)
sys.stdout.buffer.flush()
sys.stdin.buffer.read()
