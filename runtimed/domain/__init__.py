"""The domain: values and typed errors only (dataclasses and enums, the standard library).

``identity`` (runtime and worker ids, ``WorkerRef``), ``errors`` (the Runtime's
``RuntimedError`` classes, each with its stable ``code``), ``catalog`` (intents, profiles,
worker state and views), ``interaction`` (input and its ack), ``observation`` (transcripts, the
event log, diagnostics, observation cursors), ``management`` (options, limits, the runtime
summary), ``execution`` (agent profiles, a worker's execution, turns, permissions, the
execution config), ``stats`` (plain counters).
"""
