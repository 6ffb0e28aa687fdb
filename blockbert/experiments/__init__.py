"""Experiments read run directories and never train: sweep plans and summaries, and runs beside the paper's numbers
(with the numbers in ``paper_numbers.yaml``)."""
