"""The names under which a parsed message reports what was wrong with it.

A defect is a short, stable, machine-readable token: the API returns them, rules match on them and
operators count them, so they are part of the contract and never prose. Some carry a detail after a colon
(``charset-fallback:unknown-8bit``, ``bad-address:to``); match on the part before the colon. Both MIME
readers (fast-mail-parser and the stdlib fallback) report through these names, so the same fault gets the
same name whichever reader handled the message.
"""

from __future__ import annotations

from email import errors

NUL_BYTES = "nul-bytes"  # the raw message contains NUL octets (replaced by U+FFFD in every text field)
LF_LINE_ENDS = "lf-line-ends"  # the header block ends lines with a bare LF instead of CRLF
EIGHT_BIT_HEADER = "8bit-header"  # raw 8-bit header octets that are not UTF-8 (RFC 6532): charset guessed
MISSING_HEADER_SEPARATOR = "missing-header-separator"  # a non-header line ended the header block, no blank line
BAD_HEADER_LINE = "bad-header-line"  # a continuation line with no header before it
NO_DATE = "no-date"
BAD_DATE = "bad-date"
NO_FROM = "no-from"
BAD_ADDRESS = "bad-address"  # :<header>, an entry of an address header that is no mailbox
BAD_ENCODED_WORD = "bad-encoded-word"  # an RFC 2047 word whose base64 or quoted-printable is broken
CHARSET_FALLBACK = "charset-fallback"  # :<label>, unknown label or bytes invalid in it; decoded by the chain
BAD_BASE64 = "bad-base64"
BAD_QUOTED_PRINTABLE = "bad-quoted-printable"
BAD_TRANSFER_ENCODING = "bad-transfer-encoding"  # any other body that could not be transfer-decoded cleanly
MISSING_BOUNDARY = "missing-boundary"  # a multipart without a boundary parameter, or whose boundary never occurs
MISSING_CLOSE_BOUNDARY = "missing-close-boundary"
BAD_MULTIPART_ENCODING = "bad-multipart-encoding"  # a multipart declaring base64/quoted-printable
MIME_TOO_DEEP = "mime-too-deep"  # nesting past what is walked; deeper parts are not read
MIME_STRUCTURE = "mime-structure"  # fast-mail-parser refused the structure (caps, nesting); the stdlib read it
HEADER_PARSE = "header-parse"  # fast-mail-parser could not read the header section; the stdlib read it
HTML_TOO_DEEP = "html-too-deep"  # an HTML part nesting past what is sanitized: dropped, its text kept
BAD_TNEF = "bad-tnef"  # a winmail.dat that could not be unpacked (it stays a plain attachment)
INTERNAL_ERROR = "internal-error"  # a bug in mailgate: the result holds only what needs no parsing


def with_detail(name: str, detail: str) -> str:
    """``name:detail`` with the detail lower-cased and kept short, so a hostile label cannot flood a list."""
    return f"{name}:{detail.strip().lower()[:40]}"


# The stdlib records its repairs as defect instances on each part; these are the ones that say something
# about the body (header defects do not arise: headers are read by ``header_block``).
_STDLIB = {
    errors.InvalidBase64PaddingDefect: BAD_BASE64,
    errors.InvalidBase64CharactersDefect: BAD_BASE64,
    errors.InvalidBase64LengthDefect: BAD_BASE64,
    errors.NoBoundaryInMultipartDefect: MISSING_BOUNDARY,
    errors.StartBoundaryNotFoundDefect: MISSING_BOUNDARY,
    errors.MultipartInvariantViolationDefect: MISSING_BOUNDARY,
    errors.CloseBoundaryNotFoundDefect: MISSING_CLOSE_BOUNDARY,
    errors.InvalidMultipartContentTransferEncodingDefect: BAD_MULTIPART_ENCODING,
    errors.MissingHeaderBodySeparatorDefect: MISSING_HEADER_SEPARATOR,
    errors.FirstHeaderLineIsContinuationDefect: BAD_HEADER_LINE,
}


def from_stdlib(defect: errors.MessageDefect) -> str | None:
    """Our name for a stdlib body defect, or None for the ones that are noise here."""
    return next((name for cls, name in _STDLIB.items() if isinstance(defect, cls)), None)
