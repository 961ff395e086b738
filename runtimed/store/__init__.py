"""Where a Runtime's state is kept: the ``Store`` interface, the memory store and the fs store.

``base`` holds the interface (``Store``, ``Change``, ``RestoredState``); ``memory`` keeps nothing
beyond the process; ``fs`` keeps everything under a root directory, as the JSON records of
``codec``, the one mapping between domain values and JSON (which the web layer uses too). Stores
know the domain values and nothing of the Runtime, the web layer or the daemon.
"""

from .base import Change, RestoredState, Store
from .fs import FsStore
from .memory import MemoryStore

__all__ = ["Change", "FsStore", "MemoryStore", "RestoredState", "Store"]
