"""Which connectors a message goes through, in which order, and which of them are healthy."""
