"""The outbox relay: committed events to Kafka, in commit order per issue."""
