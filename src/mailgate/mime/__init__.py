"""MIME: building and reading messages with the stdlib email package, safely."""
