"""Rendering: rich tables, matplotlib figures and JSON documents of the commands' typed results.
Nothing here computes a plan; cli.py picks the renderer for ``--format``."""
