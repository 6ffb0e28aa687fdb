"""One entry point per command: it reads what it needs from the composed config and hands over to the layers below
(a training run, a measurement, a report)."""
