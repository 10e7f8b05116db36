"""Compatibility layers for code written against other libraries (NATTEN 0.14-0.17)."""
