"""Scorers equivalent to the official SQuAD v1.1, v2.0 and MRQA evaluation scripts, answer post-processing, and a
split's window logits to EM/F1 with its prediction files: plain functions, no Lightning."""
