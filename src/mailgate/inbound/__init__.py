"""Inbound: receive, authenticate, score, parse and store mail that arrives for mailgate."""
