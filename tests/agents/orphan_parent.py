"""A parent that starts a stubborn agent through ``AgentSession`` and dies without stopping it.

Run it as ``python tests/agents/orphan_parent.py DIR``: it starts ``raw_agent.py --stubborn``
(which ignores SIGTERM and the end of its stdin) in DIR, prints the agent's pid, and exits at
once with ``os._exit``, stopping nothing. On Linux, ``PR_SET_PDEATHSIG`` must then kill the agent.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtimed.agents.process import AgentLaunch, agent_environment
from runtimed.agents.session import AgentSession
from runtimed.domain.execution import ProcessExit

RAW_AGENT = Path(__file__).with_name("raw_agent.py")


class NullSink:
    async def event(self, name: str, data: dict[str, Any]) -> None:
        return None

    async def permission(self, request: Any) -> str | None:
        return None

    def protocol_error(self, message: str) -> None:
        return None

    def exited(self, exit: ProcessExit, stderr_tail: Sequence[str]) -> None:
        return None


async def main(directory: Path) -> None:
    launch = AgentLaunch((sys.executable, str(RAW_AGENT), "--stubborn"), directory, agent_environment())
    session = AgentSession(launch, NullSink())
    await session.start(timeout=10)
    print(session.pid, flush=True)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
