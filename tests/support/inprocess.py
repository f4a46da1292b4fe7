"""A service run in-process (lifespan included) against one test's Redis prefix and database.

Services under test get `QT_API_TOKEN` and the harness client sends it, like a caller that
holds the deployment's token. The `harness` fixture (in `tests.support.plugin`) builds one.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import redis
from fastapi.testclient import TestClient

from backend.infra.eventbus import (
    EventBusSettings,
    EventData,
    EventPublisher,
    create_redis_client,
    default_catalogue,
)
from backend.infra.service import Service
from tests.support.polling import wait_until

# One token for the test run; distinctive, so a test can search output for it.
API_TOKEN = f"qt-test-token-{secrets.token_urlsafe(24)}"


class ServiceHarness:
    """Runs a service in-process (lifespan included) against this test's Redis prefix and DB."""

    def __init__(
        self, redis_url: str, prefix: str, database_url: str, token: str = API_TOKEN
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.database_url = database_url
        self.token = token

    @property
    def auth_headers(self) -> dict[str, str]:
        """The `Authorization` header a caller holding the token sends."""
        return {"Authorization": f"Bearer {self.token}"}

    @contextmanager
    def run(self, factory: Callable[[], Service], timeout_s: float = 20.0) -> Iterator[TestClient]:
        """Start the service built by `factory`, wait until /health/ready, stop it on exit.

        The client sends the bearer token on every request (pass another `Authorization`
        header, or none via `client.headers.pop("Authorization")`, to act as a stranger).
        """
        service = factory()
        with TestClient(service.app, headers=self.auth_headers) as client:
            wait_until(
                lambda: client.get("/health/ready").status_code == 200,
                timeout_s,
                f"{service.name} to be ready",
            )
            yield client

    def publish(self, *events: EventData, event_id: str | None = None) -> None:
        """Publish events as another service would (one `event_id` for a single event)."""

        async def send() -> None:
            client = create_redis_client(self.redis_url)
            publisher = EventPublisher(client, "test", EventBusSettings(prefix=self.prefix))
            try:
                if event_id is not None:
                    for event in events:
                        await publisher.publish(event, event_id=event_id)
                else:
                    await publisher.publish_many(events)
            finally:
                await client.aclose()

        asyncio.run(send())

    def published(self, event_type: str) -> list[dict[str, Any]]:
        """The `data` of every event of `event_type` on this test's stream, oldest first."""
        key = EventBusSettings(prefix=self.prefix).stream_key(
            default_catalogue().spec_for_type(event_type).stream
        )
        client = redis.Redis.from_url(self.redis_url)
        try:
            entries = client.xrange(key)
        finally:
            client.close()
        return [orjson.loads(fields[b"event"])["data"] for _id, fields in entries]
