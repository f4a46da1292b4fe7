"""rl-training's job progress and result, and each policy's artifact with its digest.

`training_jobs` gains `progress` (the latest generation's figures) and `result` (the held-out
evaluation and the registered policy); `policies` gains `artifact` (the policy's JSON text,
byte for byte as digested) and `artifact_sha256`. Existing rows keep NULL: nothing wrote them
before this revision.

Revision ID: 0007_rl_policy_artifact
Revises: 0006_ledger_liquidity
Create Date: 2026-12-03 17:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007_rl_policy_artifact"
down_revision: str | None = "0006_ledger_liquidity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("progress", JSON, nullable=True))
        batch.add_column(sa.Column("result", JSON, nullable=True))
    with op.batch_alter_table("policies") as batch:
        batch.add_column(sa.Column("artifact", sa.Text(), nullable=True))
        batch.add_column(sa.Column("artifact_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("policies") as batch:
        batch.drop_column("artifact_sha256")
        batch.drop_column("artifact")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("result")
        batch.drop_column("progress")
