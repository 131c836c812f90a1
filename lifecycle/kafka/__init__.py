"""Kafka adapters: producer, in-process log, consumer sources, topic admin, inspector."""
