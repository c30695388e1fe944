"""glotta.tokenizer: language-balanced SentencePiece builds, fairness evaluation, vocabulary
extension and checkpoint adaptation to a new vocabulary."""
