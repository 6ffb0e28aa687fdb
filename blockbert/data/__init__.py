"""Corpora, tokenizers and sequence building for pre-training."""
