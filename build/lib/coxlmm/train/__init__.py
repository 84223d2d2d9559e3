"""Lightning recipes for the trained parts of the embedded default (connector, scorer heads)."""
