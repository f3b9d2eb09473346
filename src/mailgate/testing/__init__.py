"""Test doubles shipped with the package, so users' own tests can fake mailgate's peers."""
