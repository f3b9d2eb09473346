"""HTML bodies: sanitized for showing, and turned into text when a message has no text part.

The sanitizer keeps what mail layouts are made of (tables, ``font``, inline ``style`` limited to
properties that cannot position, load or run anything) and ``cid:`` image sources, which a viewer maps
to the attachments' URLs. It drops scripts, event handlers, ``javascript:`` and relative URLs (in a
mail they point nowhere, in our UI they would point at our own origin). Showing the result still
belongs in a sandboxed iframe with a strict CSP: sanitizing is one layer, not the only one.

Text is derived without inscriptis: its Python layout engine took 1.7 ms for an average HTML-only
message of the SpamAssassin corpus (half the cost of parsing a message, and seconds for a large one).
Here the text is laid out from the sanitized document, which nh3 (html5ever) has already turned into
well-formed markup whatever the input was, in one pass that looks only at the tags that shape text:
about a fifth of the time, with the same lines, paragraphs, bullets and cells for mail layouts; what it
does not do is align table columns.
"""

from __future__ import annotations

import re
from copy import deepcopy
from html import unescape

import nh3

_TAGS = nh3.ALLOWED_TAGS | {"font", "tfoot", "big", "address", "section"}
_ATTRIBUTES = deepcopy(nh3.ALLOWED_ATTRIBUTES)
for _tag, _names in {
    "*": {"style", "title", "dir", "lang", "align", "valign", "width", "height", "bgcolor"},
    "font": {"color", "face", "size"},
    "table": {"border", "cellpadding", "cellspacing"},
    "td": {"nowrap"},
    "th": {"nowrap"},
    "img": {"border", "hspace", "vspace"},
    "a": {"name", "title"},
    "ol": {"type"},
    "ul": {"type"},
    "li": {"value"},
}.items():
    _ATTRIBUTES[_tag] = _ATTRIBUTES.get(_tag, set()) | _names
# Inline CSS that styles text and boxes. Left out on purpose: position/z-index/transform (overlaying our
# UI), background and list-style-image and content (they can load URLs), behavior/-moz-binding (run code).
_STYLE_PROPERTIES = frozenset(
    {
        "color", "background-color", "font", "font-family", "font-size", "font-style", "font-weight",
        "font-variant", "text-align", "text-decoration", "text-indent", "text-transform", "letter-spacing",
        "word-spacing", "line-height", "white-space", "vertical-align", "direction", "display", "visibility",
        "width", "height", "max-width", "min-width", "max-height", "min-height",
        "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
        "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
        "border", "border-top", "border-right", "border-bottom", "border-left", "border-color", "border-style",
        "border-width", "border-collapse", "border-spacing", "border-radius", "list-style-type", "table-layout",
    }
)  # fmt: skip
_CLEANER = nh3.Cleaner(
    tags=_TAGS,
    clean_content_tags={"script", "style", "title"},
    attributes=_ATTRIBUTES,
    url_schemes=nh3.ALLOWED_URL_SCHEMES | {"cid"},
    url_relative="deny",
    filter_style_properties=_STYLE_PROPERTIES,
)
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol", "dl", "pre", "hr"})
_LINES = frozenset({"div", "tr", "li", "dt", "dd", "section", "article", "header", "footer", "address", "center"})
_CELLS = frozenset({"td", "th"})
# What ``sanitize`` leaves: lower-case tags whose attribute values are double-quoted (and may hold ">"),
# and escaped text. Splitting at the tags that shape text leaves runs of text and inline markup, whose
# tags one substitution removes: the per-token work stays in C.
_LAYOUT_NAMES = "|".join(sorted(_PARAGRAPHS | _LINES | _CELLS | {"br"}))
_LAYOUT_TAG = re.compile(rf'<(/?)({_LAYOUT_NAMES})(?=[\s/>])(?:[^>"]|"[^"]*")*>')
_OTHER_TAG = re.compile(rf'<(?!/?(?:{_LAYOUT_NAMES})(?=[\s/>]))(?:[^>"]|"[^"]*")*>')
# CSS "white-space: normal" collapses these runs to one space (U+00A0 stays, as a plain space); a lone
# space is left alone rather than replaced by itself, which is most of the matches in running text.
_COLLAPSIBLE = re.compile(r"[\t\n\r\f][ \t\n\r\f]*| [ \t\n\r\f]+")
_BLANK_RUNS = re.compile(r"\n{3,}")
CELL_SEPARATOR = "  "
MAX_OPEN_ELEMENTS = 4000
_NESTING_START = re.compile(
    r"<(?!(?:br|img|hr|meta|input|link|area|col|wbr|embed|param|source|track|base|keygen|p|li|dt|dd|td|th|tr"
    r"|tbody|thead|tfoot|colgroup|option|optgroup|rt|rp)[\s/>])[a-zA-Z]",
    re.IGNORECASE,
)
_END_TAG = re.compile(r"</[a-zA-Z]")
_ANY_TAG = re.compile(r"<[^>]*>")


def sanitize(html: str) -> str:
    """``html`` reduced to what is safe to render (see the module docstring). Check ``too_deep`` first."""
    return _CLEANER.clean(html)


def too_deep(html: str) -> bool:
    """Whether ``html`` may nest more than ``MAX_OPEN_ELEMENTS`` deep. html5ever (under nh3) scans its stack
    of open elements for each new block element, so the cost grows with the square of the depth: 100,000
    unclosed ``<div>`` take it half a minute. Start tags minus end tags bound the depth, leaving out the
    elements that never stay open (void ones, and those a parser closes by itself, like ``p`` or ``li``)."""
    if html.count("<") <= MAX_OPEN_ELEMENTS:
        return False
    return len(_NESTING_START.findall(html)) - len(_END_TAG.findall(html)) > MAX_OPEN_ELEMENTS


def tags_stripped(html: str) -> str:
    """The text of a document too deep to sanitize: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(unescape(_ANY_TAG.sub(" ", html)).split())


def sanitized_to_text(html: str) -> str:
    """Readable text for an HTML body as ``sanitize`` returns it: blocks on their own lines, paragraphs
    apart, list items bulleted, table cells side by side, ``pre`` kept, inline whitespace collapsed as a
    browser would. Tags that do not shape text (``b``, ``span``, ``a``...) are skipped."""
    markup = _OTHER_TAG.sub("", html)  # only text and the tags that shape it remain
    collapsed = "<pre" not in markup
    if collapsed:  # no preformatted text: whitespace collapses everywhere, in one pass
        markup = _COLLAPSIBLE.sub(" ", markup)
    layout = _Layout(collapsed)
    pieces = _LAYOUT_TAG.split(markup)
    layout.text(pieces[0])
    for i in range(1, len(pieces), 3):
        layout.tag(pieces[i + 1], bool(pieces[i]))
        if pieces[i + 2]:
            layout.text(pieces[i + 2])
    # Entities are decoded last: an escaped "&nbsp;" must not collapse, and "&lt;" must not become a tag.
    lines = unescape("".join(layout.out)).replace("\xa0", " ").split("\n")
    return _BLANK_RUNS.sub("\n\n", "\n".join(line.rstrip() for line in lines)).strip("\n")


class _Layout:
    """The text being laid out. Line breaks are owed until the next text arrives, so empty blocks and the
    document's edges add none."""

    __slots__ = ("breaks", "collapsed", "lists", "out", "pre", "spaced")

    def __init__(self, collapsed: bool) -> None:
        self.collapsed = collapsed  # whitespace was collapsed over the whole document already
        self.out: list[str] = []
        self.breaks = 0  # line breaks owed before the next text
        self.spaced = True  # the output ends in whitespace (or is empty): a collapsible space is dropped
        self.pre = 0
        self.lists: list[int] = []  # one entry per open list: 0 for ul, else the next ol number

    def text(self, text: str) -> None:
        if self.pre:
            self._emit(text)
            return
        if not self.collapsed:
            text = _COLLAPSIBLE.sub(" ", text)
        if self.breaks or self.spaced:
            text = text.lstrip(" ")
        if text:
            self._emit(text)

    def tag(self, tag: str, closing: bool) -> None:
        if tag == "br":
            self.breaks += 1
            self.spaced = True
        elif tag in _CELLS:
            if not closing and not self.spaced and not self.breaks:
                self._emit(CELL_SEPARATOR)
        elif tag == "li" and not closing:
            self._owe(1)
            number = self.lists[-1] if self.lists else 0
            if number:
                self.lists[-1] += 1
            self._emit("  " * max(len(self.lists), 1) + (f"{number}. " if number else "* "), force=True)
        else:
            if tag in ("ul", "ol"):
                if closing and self.lists:
                    self.lists.pop()
                elif not closing:
                    self.lists.append(1 if tag == "ol" else 0)
            elif tag == "pre":
                self.pre = max(0, self.pre - 1) if closing else self.pre + 1
            self._owe(2 if tag in _PARAGRAPHS and not self.lists else 1)

    def _owe(self, breaks: int) -> None:
        if self.out:
            self.breaks = max(self.breaks, breaks)
        self.spaced = True

    def _emit(self, text: str, force: bool = False) -> None:
        if self.breaks and self.out:
            self.out.append("\n" * self.breaks)
        self.breaks = 0
        self.out.append(text)
        self.spaced = force or text.endswith((" ", "\n"))
