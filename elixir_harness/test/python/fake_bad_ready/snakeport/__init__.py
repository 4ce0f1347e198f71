"""A fake worker whose ready frame states protocol 2 (harness test: ready-frame mismatch)."""
PROTOCOL_VERSION = 1
