"""Compression techniques, one per file, each ``compress(model_dir, cfg) -> model_dir``; ``registry`` names them."""
