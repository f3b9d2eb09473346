"""Tenancy, API keys, the audit trail and the event stream: the services every capability builds on."""
