"""Core helpers below every other layer: atomic I/O, the checkpoint format, parameter
sources, the seeding streams and progress reporting."""
