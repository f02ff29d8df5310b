"""Run-time engines for loaded compressed models: each turns a `deepshrink.load`-ed model into a
callable that runs it, and says how many bytes it keeps resident.

`deepshrink speed` and the speed bench suite measure every available engine side by side.
"""
from .engines import ENGINES, Engine, Runner, available_engines, get_engine, register_engine

__all__ = ["ENGINES", "Engine", "Runner", "available_engines", "get_engine", "register_engine"]
