"""The Python half of Snakepit's session-scoping guide, as a Snakeport user writes it.

Each call builds an adapter, runs one tool and drops the adapter ("Request arrives ->
Adapter created -> Tool executed -> Adapter destroyed"); expensive resources live in a
module-level cache for the worker's lifetime; per-session state lives on the Elixir side,
reached with ``context.call_elixir_tool``.
"""

import itertools
import os

import snakeport

# Module-level cache - shared across ALL requests
_model_cache = {}
_loads = itertools.count(1)


def load_expensive_model():
    return {"load": next(_loads), "pid": os.getpid()}


class BaseAdapter:
    def initialize(self):
        pass

    def cleanup(self):
        pass


class MyAdapter(BaseAdapter):
    def initialize(self):
        if "model" not in _model_cache:
            _model_cache["model"] = load_expensive_model()
        self.model = _model_cache["model"]

    def cleanup(self):
        # Don't clear module cache - it's shared
        pass

    def execute_tool(self, tool_name, args, context):
        # Read session state from Elixir
        state = context.call_elixir_tool("get_session_state", key="my_state")
        # Perform computation
        result = process(state, args)
        # Save updated state back to Elixir
        context.call_elixir_tool("set_session_state", key="my_state", value=result)
        return result


def process(state, args):
    total = (state or {}).get("total", 0) + args.get("amount", 0)
    return {"total": total, "calls": (state or {}).get("calls", 0) + 1}


def execute(tool_name, args):
    """One request: a fresh adapter runs the tool with the call's context."""
    adapter = MyAdapter()
    adapter.initialize()
    try:
        return adapter.execute_tool(tool_name, args, snakeport.context())
    finally:
        adapter.cleanup()


def model_info():
    """What the module-level cache holds (loaded once per worker)."""
    adapter = MyAdapter()
    adapter.initialize()
    return adapter.model


def process_tensor(tensor):
    """A request-scoped large binary: used during the request, kept nowhere."""
    return {"bytes": len(tensor), "checksum": sum(tensor[::4096]) % 65521}
