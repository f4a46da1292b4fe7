"""execution: idempotent orders on a paper venue, persisted and published (port 8002)."""
