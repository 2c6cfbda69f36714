"""aiokafka adapters: CloudEvents codec, producer/consumer settings, topic admin."""
