"""Cryptography and credentials: envelope encryption, master keys, API key tokens, audit hashing, TLS."""
