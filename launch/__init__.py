"""glotta.launch: the `glotta` CLI, torchrun/Slurm launchers and the pipeline runner.

Stages never import this package; it only wires them together.
"""
