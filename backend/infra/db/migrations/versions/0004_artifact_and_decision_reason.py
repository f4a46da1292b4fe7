"""Model artifacts stored in the registry, and a decision's reason and detail as columns.

`model_registry` gains `artifact` (the artifact's JSON text, byte for byte as digested) and
`artifact_sha256`; `artifact_uri` becomes optional, since a model registered from now on needs
no file. `bot_decisions` gains `reason` (indexed) and `detail`, filled for existing rows from
the `features` JSON where the bot used to keep them.

Revision ID: 0004_artifact_reason
Revises: 0003_outbox
Create Date: 2026-11-26 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_artifact_reason"
down_revision: str | None = "0003_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What an older ai-engine finds in `artifact_uri` after a downgrade for a model whose only copy
# was in the dropped column: a URI it refuses by name instead of a file it cannot find.
DROPPED_ARTIFACT_URI = "model-registry:artifact-dropped-by-downgrade#sha256="


def _json_text(column: str, key: str) -> str:
    """SQL reading one string member of a JSON column, on the running database."""
    if op.get_bind().dialect.name == "postgresql":
        return f"({column} ->> '{key}')"
    return f"json_extract({column}, '$.{key}')"


def upgrade() -> None:
    with op.batch_alter_table("model_registry") as batch:
        batch.add_column(sa.Column("artifact", sa.Text(), nullable=True))
        batch.add_column(sa.Column("artifact_sha256", sa.String(length=64), nullable=True))
        batch.alter_column(
            "artifact_uri",
            existing_type=sa.String(length=500),
            existing_nullable=False,
            nullable=True,
        )

    with op.batch_alter_table("bot_decisions") as batch:
        batch.add_column(sa.Column("reason", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("detail", sa.Text(), nullable=True))
    reason, detail = _json_text("features", "reason"), _json_text("features", "detail")
    op.execute(
        f"UPDATE bot_decisions SET reason = substr(coalesce({reason}, ''), 1, 64), "
        f"detail = coalesce({detail}, '')"
    )
    with op.batch_alter_table("bot_decisions") as batch:
        batch.alter_column("reason", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("detail", existing_type=sa.Text(), nullable=False)
        batch.create_index(batch.f("ix_bot_decisions_reason"), ["reason"], unique=False)


def downgrade() -> None:
    # The older code reads a decision's reason and detail from `features`: put them back there.
    # (`features` may be SQL NULL or a JSON null: either becomes an object.)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE bot_decisions SET features = (CASE WHEN jsonb_typeof(features) = 'object' "
            "THEN features ELSE '{}'::jsonb END) "
            "|| jsonb_build_object('reason', reason, 'detail', detail)"
        )
    else:
        op.execute(
            "UPDATE bot_decisions SET features = json_set(CASE WHEN json_type(features) = "
            "'object' THEN features ELSE '{}' END, '$.reason', reason, '$.detail', detail)"
        )
    with op.batch_alter_table("bot_decisions") as batch:
        batch.drop_index(batch.f("ix_bot_decisions_reason"))
        batch.drop_column("detail")
        batch.drop_column("reason")

    op.execute(
        "UPDATE model_registry SET artifact_uri = "
        f"'{DROPPED_ARTIFACT_URI}' || coalesce(artifact_sha256, '') WHERE artifact_uri IS NULL"
    )
    with op.batch_alter_table("model_registry") as batch:
        batch.alter_column(
            "artifact_uri",
            existing_type=sa.String(length=500),
            existing_nullable=True,
            nullable=False,
        )
        batch.drop_column("artifact_sha256")
        batch.drop_column("artifact")
