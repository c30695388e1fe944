"""CAT (Checkpoints Across Time) pruning: score documents across early checkpoints, select per language."""
