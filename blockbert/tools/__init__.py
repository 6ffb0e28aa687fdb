"""Measurement and reporting tools: memory profiler (memory), side-by-side timing (timing), the compared models
(models), whole runs against the HF Trainer (run_benchmark), the data pipeline benchmark (data_benchmark), sweep
plans and summaries (sweep_plan, sweep_summary), runs beside the paper's numbers (paper_report), output helpers
(display)."""
