"""Core helpers below every other layer: atomic I/O and the seeding streams."""
