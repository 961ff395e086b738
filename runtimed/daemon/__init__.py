"""The daemon: config (TOML and flags), logging, systemd notification, and ``serve`` — signals,
sites, and the order of start-up and shutdown. It builds everything below it and owns it."""
