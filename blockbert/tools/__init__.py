"""Measurement tools: the memory profiler and the side-by-side benchmark."""
