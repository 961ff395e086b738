"""``runtimed`` with a simulated slow disk: every fs store flush first sleeps.

    python tests/slow_disk.py FLUSH_DELAY_MS serve --store fs --fs-root DIR …

For tests (a request kept in flight while a signal arrives) and benchmarks (group commit under
a slow fsync). The product has no such knob: the delay is injected here, by a store subclass.
"""

from __future__ import annotations

import sys
import time

import runtimed.cli
from runtimed.daemon import serve
from runtimed.daemon.config import Config
from runtimed.store import Change, FsStore, Store

#: Written to stderr as each flush begins.
FLUSH_STARTED = "slow disk: flush started"


class SlowFsStore(FsStore):
    """An fs store whose every flush sleeps ``flush_delay`` seconds before it writes."""

    def __init__(self, *args: object, flush_delay: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.flush_delay = flush_delay

    def _write_batch(self, changes: list[Change]) -> None:
        # Tests wait for this line to know a request is in flight, instead of sleeping.
        print(FLUSH_STARTED, file=sys.stderr, flush=True)
        time.sleep(self.flush_delay)  # in the store's writer thread, as a slow fsync would be
        super()._write_batch(changes)


def main() -> None:
    flush_delay = float(sys.argv.pop(1)) / 1000

    def build_store(config: Config) -> Store:
        store = serve.build_store(config)
        if isinstance(store, FsStore):
            return SlowFsStore(store.root, config.limits.observation_backlog, flush_delay=flush_delay)
        return store

    runtimed.cli.build_store = build_store  # type: ignore[attr-defined]
    runtimed.cli.main(prog_name="runtimed")


if __name__ == "__main__":
    main()
