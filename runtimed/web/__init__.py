"""The HTTP face of the Runtime (aiohttp): REST handlers, the observation WebSocket, errors."""
