"""Persistence on SQLite or PostgreSQL through one SQLAlchemy Core code path."""
