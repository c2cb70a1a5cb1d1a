"""Runlet's actors: one module per actor. Only the composition root imports this package."""
