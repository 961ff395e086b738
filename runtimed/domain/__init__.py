"""The domain: values and typed errors only (frozen dataclasses and enums, the standard library).

``identity`` (runtime and worker ids, ``WorkerRef``), ``errors`` (every ``RuntimedError`` with its
stable ``code``), ``catalog`` (intents, profiles, worker state and views), ``interaction``
(input and its ack), ``observation`` (transcripts, the event log, diagnostics, observation
cursors), ``management`` (options, limits, the runtime summary), ``stats`` (plain counters).
"""
