"""Bounce and complaint vocabulary: what an asynchronous report says happened to one delivery.

The parser (``mailgate.mime.bounces``) speaks the RFCs; everything downstream (suppressions, delivery
status, events) decides from these few values alone, so a new report format never changes its callers.
"""

from __future__ import annotations

from enum import StrEnum


class BounceKind(StrEnum):
    """What a report means for the recipient, ordered from most to least consequential."""

    HARD = "hard"  # permanent failure (5.x.x, action failed): the address does not take mail
    SOFT = "soft"  # transient (4.x.x or delayed): the MTA still retries, or gave up on a temporary error
    COMPLAINT = "complaint"  # an ARF abuse/fraud report: the recipient called it spam
    DELIVERED = "delivered"  # a positive DSN (delivered, relayed, expanded)
    FEEDBACK = "feedback"  # an ARF report that is no complaint (virus, not-spam, auth-failure, other)
    UNKNOWN = "unknown"  # not a report, or one too malformed to act on


class DsnAction(StrEnum):
    """RFC 3464 2.3.3 action-value."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


class FeedbackType(StrEnum):
    """ARF Feedback-Type values from the IANA registry (RFC 5965, RFC 6591 for ``auth-failure``)."""

    ABUSE = "abuse"
    FRAUD = "fraud"
    VIRUS = "virus"
    OTHER = "other"
    NOT_SPAM = "not-spam"
    AUTH_FAILURE = "auth-failure"

    @property
    def complaint(self) -> bool:
        return self in (FeedbackType.ABUSE, FeedbackType.FRAUD)
