"""Training: the trainer loop, the train pipeline as a library, the frozen-feature cache, DDP helpers and metrics.

`python -m zoo.train` is the command line (`zoo.training.cli`); sweeps and views import `zoo.training.pipeline`.
"""
