"""The model zoo: one directory per built-in model (``<name>/config.json`` + weights), and their trainers
(:mod:`worker.zoo.train`)."""
