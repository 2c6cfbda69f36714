"""Use cases: run the pure domain against the store inside one transaction per command."""
