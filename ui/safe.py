"""The one door from text to the page: every page shows text through this module.

Bullets, model replies and reasoning, "why" and evidence, ids, playbook names, tasks, errors: anything that
came from a model, an import, an agent or the service is untrusted. Streamlit renders markdown (links, remote
images, `$...$` math, `:red[...]` directives, emoji shortcodes) in `st.markdown` and also in `st.caption`,
`st.error`/`warning`/`info`/`success`, `st.toast`, titles and headers, widget labels, `help=` tooltips,
expander and tab titles, metric labels and values, progress text and radio options; `st.html` renders HTML.
So:

- `text` and `code` show a string literally (plain-text elements, no markdown at all);
- `markdown`, `caption`, `error`, `warning`, `info`, `success`, `toast`, `title`, `header`, `subheader`,
  `heading` escape a plain `str` so every character shows as itself (`escape()`: a backslash before each
  markdown character, and an invisible word joiner inside URLs, emails, icon codes and arrows, which Streamlit
  rewrites after parsing); only an `Md` (made from a literal by `md()`, or by `md_format()`, whose arguments
  are escaped) reaches them as markdown;
- `label()` escapes a widget label, expander or tab title, `help=` text, metric value or radio option
  (`format_func=safe.label`); selectbox and multiselect options are plain text already;
- `html()` builds HTML from a literal template, escaping every argument; `show_html()` shows only such `Html`;
- `plotly_text()` escapes a name for a plotly legend, axis or hover (plotly renders `<a href>` and `<b>`).

`tests/test_ui_safety.py` reads every module under ui/ and app_pages/ and app.py and fails on a markdown or
HTML sink called anywhere but here, a dynamic label or `help=` not passed through `label()`, `md()`,
`md_format()` or `html()` given anything but a literal template, and `unsafe_allow_html=True`; ruff's
banned-api (pyproject.toml) flags `st.markdown` and friends as they are typed.
"""

import html as _html
import re
import string
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Optional

import streamlit as st

# Every ASCII punctuation character that markdown, GFM, Streamlit's directives, math, emoji shortcodes or
# material icons give a meaning to; CommonMark lets any ASCII punctuation be backslash-escaped. Left as
# they are (never syntax): " % ' , ; ?
_SPECIAL = re.compile(r"([!#$&()*+\-./:<=>@\[\\\]^_`{|}~])")
# After parsing, Streamlit rewrites patterns in the text itself, where backslash escapes are already gone: URLs
# (`http://`, `https://`, `www.`) and emails become links, `:material_x:` and `:streamlit:` become icons, `->`
# `<-` `--` `>=` `<=` `~=` become arrows and signs. An invisible word joiner (U+2060) inside each breaks them.
JOINER = "\u2060"
_REWRITTEN = re.compile(r"(?i)(?<=https)(?=://)|(?<=http)(?=://)|(?<=www)(?=\.)|(?=@)|(?<=:)(?=material_|streamlit:)"
                        r"|(?<=[-<>~])(?=[->=])")
_INDENT = re.compile(r"^[ \t]+", re.MULTILINE)  # 4 spaces after a blank line start a code block
# Streamlit loads its emoji plugin when the source has a shortcode-like `:word:`; a template with one would
# turn an escaped `\:smile\:` in an argument back into an emoji. (Escaped text never matches: `\:`.)
_SHORTCODE = re.compile(r":[\w+-][\w+-]*:")


class Md(str):
    """Markdown a developer wrote (never text from a model, a user, a file or the service).

    Made only by `md()` and `md_format()` (tests/test_ui_safety.py checks that). Adding a plain `str` to it
    escapes that string."""

    __slots__ = ()

    def __add__(self, other: str) -> "Md":
        return Md(str.__add__(self, escape(other)))

    def __radd__(self, other: str) -> "Md":
        return Md(str.__add__(escape(other), self))

    def join(self, parts: Iterable[str]) -> "Md":
        return Md(str.join(self, (escape(p) for p in parts)))


class Html(str):
    """An HTML fragment built by `html()`: a literal template with every argument escaped."""

    __slots__ = ()

    def __add__(self, other: str) -> "Html":
        return Html(str.__add__(self, other if isinstance(other, Html) else _html.escape(other)))

    def __radd__(self, other: str) -> "Html":
        return Html(str.__add__(_html.escape(other), self))

    def join(self, parts: Iterable[str]) -> "Html":
        return Html(str.join(self, (p if isinstance(p, Html) else _html.escape(p) for p in parts)))


def escape(value: object) -> str:
    """`value` as markdown that shows exactly its characters (an `Md` is returned as it is)."""
    if isinstance(value, Md):
        return value
    return _SPECIAL.sub(r"\\\1", _REWRITTEN.sub(JOINER, _INDENT.sub("", str(value))))


def md(literal: str) -> Md:
    """Developer-written markdown, passed as a string literal (checked by tests/test_ui_safety.py)."""
    _check_template(literal)
    return Md(literal)


class _MdFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        out = format(value, format_spec)
        return value if isinstance(value, Md) and not format_spec else escape(out)


class _HtmlFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        out = format(value, format_spec)
        return value if isinstance(value, Html) and not format_spec else _html.escape(out)


def md_format(template: str, /, *args: Any, **kwargs: Any) -> Md:
    """Markdown from a literal template (`str.format` syntax), every argument escaped (an `Md` argument is
    kept). A field inside a `code span` is refused: backslash escapes do not work there."""
    _check_template(template)
    for i, part in enumerate(template.split("`")):
        if i % 2 and "{" in part:
            raise ValueError(f"md_format: a field inside a code span cannot be escaped: {template!r}")
    return Md(_MdFormatter().vformat(template, args, kwargs))


def _check_template(template: str) -> None:
    if _SHORTCODE.search(template.replace(":material/", "")):
        raise ValueError(f"markdown template with an emoji shortcode (use the emoji itself): {template!r}")


def label(value: object) -> str:
    """A widget label, expander or tab title, `help=` text, metric value, progress text or radio option,
    escaped so it shows literally (a literal label needs no call; an `Md` label is kept)."""
    return escape(value)


def html(template: str, /, *args: Any, **kwargs: Any) -> Html:
    """HTML from a literal template (`str.format` syntax), every argument escaped (an `Html` one is kept)."""
    return Html(_HtmlFormatter().vformat(template, args, kwargs))


def show_html(fragment: Html) -> None:
    """Show HTML built by `html()`; refuses any other string."""
    if not isinstance(fragment, Html):
        raise TypeError("show_html takes only an Html fragment built by safe.html()")
    st.html(fragment)


def plotly_text(value: object) -> str:
    """A name for a plotly legend, axis label or hover: plotly renders `<a href>`, `<b>`, `<br>` in them."""
    return _html.escape(str(value), quote=False)


# ------------------------------------------------------------------ plain text: shown as is, no escaping needed
def text(value: object) -> None:
    """Plain text, literally (`st.text`: no markdown, no HTML)."""
    st.text(str(value))


def code(body: str, long_lines: int = 25) -> None:
    """A block of text literally: a plain code block (no highlighting), wrapped, scrolling when long."""
    st.code(body, language=None, wrap_lines=True, height=420 if body.count("\n") > long_lines else "content")


# ------------------------------------------------------------------ markdown sinks: a plain str is escaped
def markdown(body: object) -> None:
    st.markdown(escape(body))


def caption(body: object) -> None:
    st.caption(escape(body))


Icon = Optional[str]


def error(body: object, icon: Icon = None) -> None:
    st.error(escape(body), icon=icon)


def warning(body: object, icon: Icon = None) -> None:
    st.warning(escape(body), icon=icon)


def info(body: object, icon: Icon = None) -> None:
    st.info(escape(body), icon=icon)


def success(body: object, icon: Icon = None) -> None:
    st.success(escape(body), icon=icon)


def toast(body: object, icon: Icon = None) -> None:
    st.toast(escape(body), icon=icon)


def title(body: object) -> None:
    st.title(escape(body))


def header(body: object) -> None:
    st.header(escape(body))


def subheader(body: object) -> None:
    st.subheader(escape(body))


def heading(body: object, level: Literal[4, 5, 6] = 4) -> None:
    """A small heading (`####`), its text escaped."""
    st.markdown("#" * level + " " + escape(body))


def labels(values: Sequence[object]) -> list[str]:
    """`label()` of each: the titles of `st.tabs`."""
    return [label(v) for v in values]
