"""Data sets the engine ships with (docs/architecture.md): the Rotten Tomatoes split, :mod:`worker.data.rt`."""
