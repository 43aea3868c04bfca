"""Data sets the engine ships with (DESIGN §8): the Rotten Tomatoes split, :mod:`worker.data.rt`."""
