"""Measurement: timing (side by side, training steps), memory, the compared models, the device and precision, and
the measurements the commands run: `blockbert profile` (Table 1) and `blockbert benchmark` (models, attention, data
pipeline, whole runs), and `blockbert plan`'s memory and time (``plan_fit``, ``plan``)."""
