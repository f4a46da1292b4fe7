#!/usr/bin/env bash
# Writes deploy/secrets.env and deploy/secrets/{postgres-password,grafana-admin-password} with
# fresh random values, unless they exist (pass --force to replace them: that is a rotation,
# see docs/DEPLOYMENT.md). Both are git-ignored.
set -euo pipefail
cd "$(dirname "$0")"
if [[ -e secrets.env && "${1:-}" != "--force" ]]; then
    echo "deploy/secrets.env exists; pass --force to replace it" >&2
    exit 1
fi
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
umask 077
mkdir -p secrets
postgres_password="$(random)"
printf '%s' "$postgres_password" > secrets/postgres-password
printf '%s' "$(random)" > secrets/grafana-admin-password
cat > secrets.env <<ENV
QT_API_TOKEN=$(random)
RISK_APPROVAL_SECRET=$(random)
DATABASE_URL=postgresql+asyncpg://trader:${postgres_password}@postgres:5432/trader
ENV
echo "wrote deploy/secrets.env and deploy/secrets/ (mode 600)"
