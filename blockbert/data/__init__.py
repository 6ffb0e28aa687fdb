"""Data: corpora and tokenizers, pre-training sequences, QA files and windows, the resumable samplers, the two data
modules, and the one cache every built artifact goes through (``cache``)."""
