"""Agents: the supervisor of agent processes and the built-in agents.

- ``supervisor``: the ``Supervisor``, the ``ExecutionBackend`` the Runtime calls (contract §9):
  one supervised task per agent-backed worker, which starts its agent, feeds it turns, answers
  or forwards its permission requests, restarts, stops and restores it;
- ``session``: ``AgentSession``, the ACP client side over one agent process (the SDK's client,
  fed only valid lines), turning what the agent does into what the supervisor needs;
- ``process``: ``AgentProcess``, one agent child process: exact environment, own process group,
  bounded and rate-limited output, signalled and reaped;
- ``echo``: the built-in echo agent (``python -m runtimed.agents.echo``), the model for writing one;
- ``chat``: the built-in chat agent (``python -m runtimed.agents.chat``), which streams each turn
  from an OpenAI-compatible server through the ``openai`` library.

It may import ``domain`` and ``runtime``, never ``web`` or ``daemon``. The ACP SDK (and the
pydantic models it brings) and the ``openai`` library stay inside this package: nothing else in
runtimed imports them.
"""
