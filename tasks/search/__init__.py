"""Automated compression: a multi-objective search over recipes of the compression techniques (Optuna), each trial
built, evaluated and benchmarked by the same tasks as a hand-written variant."""
