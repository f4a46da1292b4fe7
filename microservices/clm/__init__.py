"""clm: the continuous-learning manager (async worker, side port 8011)."""
