"""Pure folds over the event log: manifest and step states, cache index; and their tables."""
