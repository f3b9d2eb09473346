"""The outbound pipeline: accept, queue, route, deliver, record."""
