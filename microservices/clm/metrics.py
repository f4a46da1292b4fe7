"""clm's metrics (Prometheus default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PSI = Gauge(
    "clm_feature_psi", "PSI of each feature's live window against its reference.", ["feature"]
)
KS_PVALUE = Gauge(
    "clm_feature_ks_pvalue", "KS test p-value of each feature against its reference.", ["feature"]
)
DRIFT_CHECK = Histogram(
    "clm_drift_check_seconds",
    "Time of one input-drift check (every feature, PSI and KS).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
ALARMS = Counter("clm_drift_alarms_total", "Drift alarms, by kind (input, concept).", ["kind"])
RETRAINS = Counter(
    "clm_retrains_total",
    "Retraining runs, by trigger (drift, concept, schedule, expiry, request) and outcome.",
    ["trigger", "outcome"],
)
PROMOTIONS = Counter(
    "clm_promotions_total", "Champion alias moves, by reason (beat, forced, rollback).", ["reason"]
)
SCORED = Counter(
    "clm_predictions_scored_total",
    "Predictions scored against the realized move, by role (champion, challenger, served).",
    ["role"],
)
BRIER = Gauge(
    "clm_brier_score", "Live Brier score, by role and model version.", ["role", "version"]
)
HIT_RATE = Gauge("clm_hit_rate", "Live hit rate, by role and model version.", ["role", "version"])
CHAMPION_AGE = Gauge("clm_champion_age_seconds", "Age of the champion clm scores.")
TICKS = Counter("clm_ticks_total", "Market ticks consumed.")

for _kind in ("input", "concept"):
    ALARMS.labels(_kind)
