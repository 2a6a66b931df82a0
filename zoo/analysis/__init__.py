"""Analysis on top of training: sweeps and k-fold cross-validation, attention views and scores, plots.

Commands: `python -m zoo.sweep`, `python -m zoo.crossval`, `python -m zoo.viz` (thin entry points into this package).
"""
