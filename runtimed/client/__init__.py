"""The terminal client: ``runtimed status``, ``workers``, ``send``, ``watch``, ``chat`` and the rest.

It talks to a running daemon over HTTP and the observation WebSocket with aiohttp's client, and
knows the JSON shapes through the server's own schemas and codec (``web.schemas``,
``store.codec``), never through the Runtime. ``connection`` says where the daemon is and what
went wrong reaching it; ``api`` makes one call per route and checks each answer's shape;
``observe`` follows a worker's WebSocket across dropped connections and restarts; ``render``
turns shapes and events into lines for a person; ``commands``, ``watch`` and ``chat`` are the
bodies of the subcommands, which ``runtimed.cli`` declares.
"""
