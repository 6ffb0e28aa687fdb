"""The Lightning layer around the pure-torch model: modules (pre-training, QA), the optimizer and schedule, the
callbacks that make runs safe to stop and resume, metrics.json and the loggers. No Hydra here: the task entry points
(``blockbert.tasks``) read the config and hand plain values over."""
