"""rl-training: trains position-sizing policies on the paper venue as background jobs."""
