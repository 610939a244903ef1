"""Measuring variants: evaluate, benchmark (in their runtime), select under constraints, report, serve, compare."""
