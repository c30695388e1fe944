"""CAT (Checkpoints Across Time) pruning: score documents across early checkpoints, select per language.

Follow the data:
  checkpoints.py  which stage-1 checkpoints to score (the run's keep_steps) and that they belong together
  score.py        `glotta prune score`: forward-only NLL per document and checkpoint (torchrun, TP/PP/DP)
  table.py        the scores table: Parquet rows + run/tokenizer/steps metadata
  statistics.py   per-document scores: CAT, its scale-free variants, baselines
  selection.py    per-language / UniMax / global budgets -> kept mask
  select.py       `glotta prune select`: checks, exclude list, pruned shards, report
  report.py       kept-vs-dropped statistics and histograms;  tracking.py  MLflow logging
"""
