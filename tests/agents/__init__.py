"""Agents that tests run as child processes: one on the ACP SDK's agent side, one speaking raw lines."""
