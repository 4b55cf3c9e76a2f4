"""NSP: Noisy Student Training platform."""

__version__ = "0.1.0"
