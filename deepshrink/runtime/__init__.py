"""Run-time engines for loaded compressed models: each turns a `deepshrink.load`-ed model into a
callable that runs it, and says how many bytes it keeps resident.

`deepshrink speed` and the speed bench suite measure every available engine side by side.
"""
from .engines import ENGINES, Engine, Runner, available_engines, get_engine, register_engine
from .frozen import FrozenModel

__all__ = ["ENGINES", "Engine", "FrozenModel", "Runner", "available_engines", "get_engine", "register_engine"]
