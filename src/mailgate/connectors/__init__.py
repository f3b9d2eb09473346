"""Connectors to upstream mail systems; foreign exceptions are mapped to outcomes at this boundary."""
