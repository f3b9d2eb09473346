"""Metrics registry and structured logging; importable by every layer."""
