"""Command line: `python -m backend.infra.db upgrade|downgrade|current|heads`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ._errors import DatabaseError
from ._migrate import current_revision, downgrade, head_revision, migrate
from ._settings import load_database_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend.infra.db",
        description="Apply or revert the schema migrations. The database is DATABASE_URL, "
        "or ./var/<service>.db when it is not set.",
    )
    parser.add_argument("--url", help="database URL (overrides DATABASE_URL)")
    parser.add_argument(
        "--service", default="quantum-trader", help="names the default SQLite file (./var/NAME.db)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upgrade", help="migrate up (default: to the newest revision)")
    up.add_argument("revision", nargs="?", default="head")
    down = commands.add_parser("downgrade", help="migrate down: a revision, -1, or base")
    down.add_argument("revision")
    commands.add_parser("current", help="print the revision the database is at")
    commands.add_parser("heads", help="print the newest revision of the scripts")
    return parser


async def _main(args: argparse.Namespace) -> str:
    overrides = {"url": args.url} if args.url else {}
    settings = load_database_settings(args.service, **overrides)
    if args.command == "upgrade":
        return f"at {await migrate(settings, args.revision) or 'base'}"
    if args.command == "downgrade":
        return f"at {await downgrade(settings, args.revision) or 'base'}"
    if args.command == "current":
        return (await current_revision(settings)) or "base"
    return head_revision()


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit status 1 with a one-line message when the database fails."""
    args = _parser().parse_args(argv)
    try:
        print(asyncio.run(_main(args)))
    except DatabaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
