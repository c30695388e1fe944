"""glotta.train: Megatron-core GPT training (TP/PP/DP under torchrun, CPU + gloo or GPU + nccl)."""
