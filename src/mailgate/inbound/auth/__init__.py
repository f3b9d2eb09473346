"""Sender authentication of received mail: SPF, DKIM, ARC and DMARC, and the Authentication-Results
header that records them. Callers use ``SenderAuthenticator``; the modules beside it are its parts."""

from mailgate.inbound.auth.check import SenderAuthenticator

__all__ = ["SenderAuthenticator"]
