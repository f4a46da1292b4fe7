"""Shared infrastructure: observability, event bus, database, service assembly."""
