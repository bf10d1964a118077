"""Tiny configs: the structure of the originals with small widths, for tests and the demo."""
