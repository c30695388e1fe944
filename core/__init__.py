"""glotta: distributed multilingual pretraining with consent filtering, fair tokenizers and CAT pruning.

Subpackages follow the data: glotta.data -> glotta.pruning.consent -> glotta.tokenizer ->
glotta.train -> glotta.pruning.cat -> glotta.train. glotta.launch wires them into the CLI.
"""

__version__ = "0.1.0"
