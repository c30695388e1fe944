"""Data pruning: consent filtering before training (glotta.pruning.consent) and CAT between stages (glotta.pruning.cat)."""
