"""A fake worker that answers with crafted frames (harness test: frames with trailing bytes)."""
PROTOCOL_VERSION = 1
