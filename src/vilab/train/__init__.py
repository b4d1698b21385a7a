"""Training loops, checkpoints and run logging."""
