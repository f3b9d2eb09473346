"""mailgate: a self-hosted email gateway."""

__version__ = "0.1.0"
