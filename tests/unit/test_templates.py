"""Template rendering: strict variables, escaping where it belongs, and a sandbox that holds."""

from __future__ import annotations

import pytest

from mailgate.domain.errors import InvalidInput
from mailgate.mime.templates import MAX_OUTPUT, TemplateSource, check, render


def source(subject: str = "Hi {{ name }}", text: str | None = "Hello {{ name }}", html: str | None = None):
    return TemplateSource(subject, text, html)


def test_variables_fill_every_part() -> None:
    out = render(source(html="<p>{{ name }} has {{ n }} items</p>"), {"name": "Ada", "n": 3})
    assert (out.subject, out.text, out.html) == ("Hi Ada", "Hello Ada", "<p>Ada has 3 items</p>")


def test_a_missing_variable_is_an_error_naming_it() -> None:
    with pytest.raises(InvalidInput, match="missing variable 'name'") as info:
        render(source(), {})
    assert info.value.field == "variables"


def test_html_is_escaped_text_and_subject_are_not() -> None:
    out = render(source(subject="{{ v }}", text="{{ v }}", html="{{ v }}"), {"v": "<b>&"})
    assert out.text == "<b>&" and out.subject == "<b>&"
    assert out.html == "&lt;b&gt;&amp;"


def test_the_subject_is_one_line_whatever_the_variables_hold() -> None:
    out = render(source(subject="a {{ v }} b"), {"v": "x\r\nBcc: evil@example.org", "name": "n"})
    assert out.subject == "a x Bcc: evil@example.org b"


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ name.__class__.__init__.__globals__ }}",
        "{{ items.append(1) }}",
    ],
)
def test_the_sandbox_refuses_escapes_and_mutation(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"not allowed|failed"):
        render(source(text=text), {"name": "n", "items": [1]})


def test_no_globals_to_compute_with() -> None:
    with pytest.raises(InvalidInput, match="missing variable 'range'"):
        render(source(text="{% for i in range(10) %}x{% endfor %}"), {"name": "n"})


def test_output_is_capped() -> None:
    big = "x" * 1_000_000
    with pytest.raises(InvalidInput, match="renders to more than"):
        render(source(text="{{ v }}{{ v }}{{ v }}"), {"v": big, "name": "n"})
    assert 3 * len(big) > MAX_OUTPUT


def test_syntax_errors_are_found_when_saved_with_the_line() -> None:
    with pytest.raises(InvalidInput, match="template html, line 2") as info:
        check(source(html="<p>\n{% if x %}</p>"))
    assert info.value.field == "html"
    with pytest.raises(InvalidInput, match="text or an html body"):
        check(TemplateSource("s", None, None))
    check(source(html="<p>{{ name }}</p>"))


def test_filters_and_loops_over_given_data_work() -> None:
    out = render(
        source(text="{% for i in items %}{{ i.name|upper }};{% endfor %}{{ total|round(1) }}"),
        {"name": "n", "items": [{"name": "a"}, {"name": "b"}], "total": 2.345},
    )
    assert out.text == "A;B;2.3"
