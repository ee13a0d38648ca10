"""Transfer scripts: TOML programs of port, memory, DMA and device steps (docs/scripts.md)."""

from hil.script.loader import load_script
from hil.script.model import Op, Script, ScriptError, Step

__all__ = ["Op", "Script", "ScriptError", "Step", "load_script"]
