"""GGUF files without llama.cpp: read a header safely, estimate the memory a model needs.

format.py holds the format's constants and the parsed header's types, reader.py the hostile-file-proof
reader, memory.py the estimate and the load-time check.
"""

from .format import GGUFError, GGUFInfo, OmittedValue, TensorInfo
from .memory import MemoryEstimate, check_fits, estimate_memory, format_bytes, preflight
from .reader import read_gguf_info

__all__ = [
    "GGUFError",
    "GGUFInfo",
    "MemoryEstimate",
    "OmittedValue",
    "TensorInfo",
    "check_fits",
    "estimate_memory",
    "format_bytes",
    "preflight",
    "read_gguf_info",
]
