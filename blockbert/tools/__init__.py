"""Measurement and reporting tools: memory profiler (memory), side-by-side timing (timing), the compared models
(models), the data pipeline benchmark (data_benchmark), sweep plans and summaries (sweep_plan, sweep_summary)."""
