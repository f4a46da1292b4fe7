"""The suite's shared test support: fixtures in `plugin` (loaded by `pytest_plugins`), helpers
in the other modules (polling, processes, factories, Redis, PostgreSQL, OTLP). docs/TESTING.md
lists them."""
