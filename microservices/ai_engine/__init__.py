"""ai-engine: direction signals from the registered model, first trained on simulated history."""
