"""ai-engine's serving metrics (Prometheus default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREDICTIONS = Counter("ai_predictions_total", "Predictions served, by direction.", ["direction"])
CONFIDENCE = Histogram(
    "ai_signal_confidence",
    "Confidence of served predictions.",
    buckets=(0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),
)
LATENCY = Histogram(
    "ai_prediction_latency_seconds",
    "Time to compute one prediction (features and model).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
MODEL_INFO = Gauge("ai_model_serving", "1 for the model version being served.", ["version"])
SIGNALS_UNPUBLISHED = Counter(
    "ai_signals_unpublished_total", "Signals served but not announced on the bus (bus down)."
)
SWAPS = Counter(
    "ai_model_swaps_total", "Times another model version started serving without a restart."
)
EXPIRED = Counter(
    "ai_predictions_refused_expired_total",
    "Predictions refused because the serving model is older than AI_MODEL_MAX_AGE_S.",
)
