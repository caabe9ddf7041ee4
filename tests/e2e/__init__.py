"""End-to-end tests: the relay and nodes as separate twistd processes, real clients in front."""
