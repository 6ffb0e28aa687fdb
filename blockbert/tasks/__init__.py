"""Task entry points (one module per command) and the hand-over from the CLI to Hydra."""
