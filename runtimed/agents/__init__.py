"""Agents: the supervisor of agent processes and the built-in agents.

This package will hold the supervisor that starts agent processes and speaks the Agent Client
Protocol (ACP) to them as the client, behind a narrow interface the Runtime calls, and the
built-in agents runtimed ships as runnable modules (``python -m runtimed.agents.echo``).

It may import ``domain`` and ``runtime``, never ``web`` or ``daemon``. The ACP SDK (and the
pydantic models it brings) stays inside this package: nothing else in runtimed imports it.
"""
