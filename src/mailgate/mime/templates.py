"""Message templates: subject, text and html rendered from caller variables in a Jinja2 sandbox.

Templates are written by tenants and variables come from their applications, so neither is trusted:
the immutable sandbox refuses attribute tricks and mutation, ``StrictUndefined`` turns a missing
variable into an error instead of an empty string (an email saying "Hello ," is a bug the sender
wants to hear about), html output is autoescaped while subject and text are not, and output size is
capped so that a loop cannot fill memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailgate.domain.errors import InvalidInput

MAX_OUTPUT = 2 * 1024 * 1024
MAX_SOURCE = 512 * 1024
_PARTS = ("subject", "text", "html")


@dataclass(frozen=True, slots=True)
class TemplateSource:
    subject: str
    text: str | None
    html: str | None


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str | None
    html: str | None


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True, auto_reload=False
    )
    env.globals.clear()  # no range/dict/lipsum/cycler: a template formats data, it does not compute
    return env


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def check(source: TemplateSource) -> None:
    """Compile every part now, so a syntax error is a 422 when the template is saved, not when mail is sent."""
    for part in _PARTS:
        text = getattr(source, part)
        if text is None:
            continue
        if len(text) > MAX_SOURCE:
            raise InvalidInput(f"template {part} is longer than {MAX_SOURCE} characters", field=part)
        try:
            (_HTML if part == "html" else _PLAIN).parse(text)
        except TemplateSyntaxError as exc:
            raise InvalidInput(f"template {part}, line {exc.lineno}: {exc.message}", field=part) from None
    if source.text is None and source.html is None:
        raise InvalidInput("a template needs a text or an html body", field="text")


def render(source: TemplateSource, variables: Mapping[str, Any]) -> Rendered:
    """Render each part; raises ``InvalidInput`` naming the missing variable or the failing part."""
    out: dict[str, str | None] = {}
    for part in _PARTS:
        text = getattr(source, part)
        if text is None:
            out[part] = None
            continue
        try:
            result = "".join(_bounded(_compiled(part == "html", text).generate(**variables), part))
        except UndefinedError as exc:
            raise InvalidInput(f"template {part}: {_missing(exc)}", field="variables") from None
        except SecurityError as exc:
            raise InvalidInput(f"template {part} is not allowed to do that: {exc}", field=part) from None
        except TemplateSyntaxError as exc:
            raise InvalidInput(f"template {part}, line {exc.lineno}: {exc.message}", field=part) from None
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise InvalidInput(f"template {part} failed: {type(exc).__name__}: {exc}", field=part) from None
        out[part] = result
    subject = " ".join((out["subject"] or "").split())  # a header is one line, whatever the template did
    return Rendered(subject=subject, text=out["text"], html=out["html"])


@lru_cache(maxsize=1024)
def _compiled(html: bool, text: str) -> Template:
    """Compiling costs far more than rendering; a batch send renders one template thousands of times."""
    return (_HTML if html else _PLAIN).from_string(text)


def _bounded(chunks: Any, part: str) -> Any:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise InvalidInput(f"template {part} renders to more than {MAX_OUTPUT} characters", field=part)
        yield chunk


def _missing(exc: UndefinedError) -> str:
    """Jinja says "'name' is undefined"; say which variable the caller must supply."""
    message = exc.message or "a variable is undefined"
    if message.endswith("is undefined"):
        return f"missing variable {message.removesuffix(' is undefined')}"
    return message
