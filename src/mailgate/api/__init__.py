"""The REST API: translates HTTP to service calls and back, nothing more."""
