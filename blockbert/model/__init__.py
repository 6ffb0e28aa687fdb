"""The pure-PyTorch model: its config (``config``), the attention kernels (``attention``, ``dropout_attention``) and
the encoder with its heads (``modeling``). No file I/O, no Lightning, Hydra or W&B; nothing is imported here, so
that ``blockbert.model.config`` stays light for the command line."""
