"""Read models from the log: the projector role, list and scorecard queries, and replay."""
