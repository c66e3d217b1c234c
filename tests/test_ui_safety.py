"""Untrusted text never becomes markup: every page shows text through ui/safe.py.

Two parts. A reading of every module under ui/ and app_pages/ and app.py (with `ast`) that fails on a
markdown or HTML sink called outside ui/safe.py, on a widget label, `help=` text, tab title, metric value or
radio option that is neither a literal nor passed through `safe.label()` (or made by `safe.md()` /
`safe.md_format()`), on `safe.md()`, `safe.md_format()` or `safe.html()` given anything but a literal
template, and on `unsafe_allow_html=True` anywhere. ruff's banned-api (pyproject.toml) flags the module-level
calls (`st.markdown`) as they are typed; this check also sees `col.caption(...)`, `st.sidebar.error(...)`
and labels, which ruff cannot.

Then the helpers themselves: a hostile string through each one, in AppTest, reaches Streamlit escaped, and
the escaped text rendered by a CommonMark parser is exactly the original characters, with no link, image,
emphasis, code or HTML.
"""

import ast
import html
import re
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from tests.support import open_app
from ui import safe

ROOT = Path(__file__).resolve().parent.parent
SAFE_MODULE = ROOT / "ui" / "safe.py"
MODULES = sorted([*(ROOT / "ui").rglob("*.py"), *(ROOT / "app_pages").rglob("*.py"), ROOT / "app.py"])

# Streamlit calls that render their text as markdown or HTML: only ui/safe.py calls them.
SINKS = {"markdown", "write", "write_stream", "caption", "error", "warning", "info", "success", "toast", "title",
         "header", "subheader", "latex", "html", "badge", "exception", "help", "echo"}
NOT_STREAMLIT = {"safe", "log", "logger", "logging"}  # receivers whose .info()/.error() are not Streamlit's
# Widgets whose label (argument 0 or label=) renders markdown.
LABELLED = {"button", "checkbox", "toggle", "radio", "selectbox", "multiselect", "text_input", "text_area",
            "number_input", "slider", "select_slider", "date_input", "time_input", "datetime_input", "color_picker",
            "file_uploader", "camera_input", "audio_input", "download_button", "link_button", "form_submit_button",
            "popover", "expander", "status", "segmented_control", "pills", "dialog", "spinner"}
# Other markdown arguments: (call name, position, keyword).
MORE_ARGS = [("metric", 0, "label"), ("metric", 1, "value"), ("metric", 2, "delta"), ("page_link", 1, "label"),
             ("progress", 1, "text"), ("tabs", 0, "tabs"), ("Page", -1, "title")]
MARKDOWN_KWARGS = {"help", "label", "captions", "delta_description"}  # on any call
OPTIONS_AS_MARKDOWN = {"radio", "pills", "segmented_control"}  # their options render markdown
ESCAPERS = {"label", "labels", "md", "md_format", "escape"}  # safe.* calls whose result is safe markdown
TEMPLATES = {"md", "md_format", "html"}  # safe.* calls whose first argument must be a literal


def _is_safe_call(node: ast.AST, names: set[str] = ESCAPERS) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "safe")


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.JoinedStr):
        return all(isinstance(v, ast.Constant) for v in node.values)
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(_is_literal(e) for e in node.elts)
    return False


def _is_safe_markdown(node: ast.AST) -> bool:
    """A literal, a `safe.label()`-like call, or a choice or sum of those."""
    if _is_literal(node) or _is_safe_call(node):
        return True
    if isinstance(node, ast.IfExp):
        return _is_safe_markdown(node.body) and _is_safe_markdown(node.orelse)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_safe_markdown(node.left) and _is_safe_markdown(node.right)
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(_is_safe_markdown(e) for e in node.elts)
    if isinstance(node, ast.ListComp):
        return _is_safe_markdown(node.elt)
    return False


def _is_safe_formatter(node: ast.AST) -> bool:
    """`format_func=safe.label`, or a lambda whose result is safe markdown."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "safe":
        return node.attr in ESCAPERS
    return isinstance(node, ast.Lambda) and _is_safe_markdown(node.body)


def _name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _receiver(func: ast.AST) -> str:
    return func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""


def _arg(call: ast.Call, position: int, keyword: str) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[position] if 0 <= position < len(call.args) else None


def problems(path: Path) -> list[str]:
    """Every untrusted-text hazard in one module, as `file:line: what (what to do)`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    is_safe_module = path == SAFE_MODULE
    out: list[str] = []

    def bad(node: ast.AST, what: str) -> None:
        out.append(f"{rel}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamlit") and not is_safe_module:
            for alias in node.names:
                if alias.name in SINKS:
                    bad(node, f"`from {node.module} import {alias.name}`: a markdown/HTML sink; use ui.safe")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        for kw in node.keywords:
            if kw.arg == "unsafe_allow_html" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                bad(node, "unsafe_allow_html: never; build HTML with safe.html() and show it with safe.show_html()")
        if is_safe_module:
            continue
        if name in SINKS and _receiver(node.func) not in NOT_STREAMLIT:
            bad(node, f"`.{name}(...)` renders markdown/HTML; use safe.{name if hasattr(safe, name) else 'text'}()"
                      " (plain text is escaped, developer markdown goes through safe.md/md_format)")
        if name in ("Md", "Html"):
            bad(node, f"`{name}(...)` made by hand; use safe.md(), safe.md_format() or safe.html()")
        if _is_safe_call(node, TEMPLATES) and not (node.args and isinstance(node.args[0], ast.Constant)
                                                   and isinstance(node.args[0].value, str)):
            bad(node, f"safe.{name}() takes a string literal as its template; pass the text as an argument")
        checks: list[tuple[ast.AST | None, str]] = []
        if name in LABELLED:
            checks.append((_arg(node, 0, "label"), "label"))
        checks += [(_arg(node, pos, kw), kw) for call, pos, kw in MORE_ARGS if call == name]
        checks += [(kw.value, kw.arg) for kw in node.keywords if kw.arg in MARKDOWN_KWARGS]
        for value, what in checks:
            if value is not None and not _is_safe_markdown(value):
                bad(value, f"the {what} of `.{name}(...)` renders markdown: a literal, or wrap it in safe.label()")
        if name in OPTIONS_AS_MARKDOWN:
            options, fmt = _arg(node, 1, "options"), _arg(node, -1, "format_func")
            if options is not None and not _is_literal(options) and not (fmt is not None and _is_safe_formatter(fmt)):
                bad(node, f"the options of `.{name}(...)` render markdown: literals, or format_func=safe.label")
        if name == "image":
            src = _arg(node, 0, "image")
            if not (isinstance(src, ast.Call) and _name(src.func) == "b64decode"):
                bad(node, "`.image(...)` of anything but decoded bytes may fetch a remote URL")
    return out


def test_no_markdown_or_html_sink_outside_ui_safe() -> None:
    assert SAFE_MODULE in MODULES and len(MODULES) > 5
    found = [p for path in MODULES for p in problems(path)]
    assert not found, ("untrusted text could become markup (see ui/safe.py for the helpers):\n  "
                       + "\n  ".join(found))


def test_the_check_finds_each_kind_of_hazard(tmp_path: Path) -> None:
    page = tmp_path / "page.py"
    page.write_text(
        "import streamlit as st\nfrom streamlit import caption\nfrom ui import safe\n"
        "c1, c2 = st.columns(2)\n"
        "st.markdown(x)\n"                                # 5
        "c1.caption(x)\n"                                 # 6
        "st.sidebar.error(x)\n"                           # 7
        "st.button(f'go {x}')\n"                          # 8
        "st.expander(x)\n"                                # 9
        "st.tabs(names)\n"                                # 10
        "c2.metric('n', x)\n"                             # 11
        "st.text_input('a', help=x)\n"                    # 12
        "st.radio('r', opts)\n"                           # 13
        "st.html(x)\n"                                    # 14
        "st.code(x, unsafe_allow_html=True)\n"            # 15
        "safe.md(x)\n"                                    # 16
        "safe.Md(x)\n"                                    # 17
        "st.page_link('p.py', label=x)\n"                 # 18
        "st.image(url)\n"                                 # 19
        "st.progress(0.5, text=x)\n"                      # 20
        # fine:
        "st.button('go')\nst.button(safe.label(x))\nst.expander(safe.label(x) if x else 'none')\n"
        "st.tabs(safe.labels(names))\nst.radio('r', ['a', 'b'])\nst.radio('r', opts, format_func=safe.label)\n"
        "safe.caption(x)\nsafe.markdown(safe.md_format('**{}**', x))\nst.text(x)\nst.code(x, language=None)\n"
        "st.selectbox('s', opts, format_func=lambda o: o)\nst.metric('n', safe.label(x))\n")
    lines = sorted({int(p.split(":")[1]) for p in problems(page)})
    assert lines == [2, *range(5, 21)]


# ------------------------------------------------------------------ the helpers
HOSTILE = ('![px](http://127.0.0.1:9/pixel.png) [click](http://127.0.0.1:9/x) '
           '<a href="http://127.0.0.1:9/y" style="position:fixed;inset:0">overlay</a> :red[alert] $x^2$ '
           ':smile: :material/home: **bold** _it_ `code` ~~gone~~ &lt; &amp; \\* www.example.com a@b.co '
           '<img src=x onerror=alert(1)> | a | b | {x} #tag ^sup 1\\. x :material_home: :streamlit: a -> b -- c >= d '
           'https://evil.example/p WWW.Evil.example x+y@mail.example.org')
LINES = "# heading\n- item\n+ item\n1. first\n2) second\n> quote\n    indented\n\n    code?\n===\n---\n***\n"


def _rendered(markdown: str) -> str:
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)


def _text_of(rendered: str) -> str:
    """The text a browser shows, without the invisible word joiners (U+2060) that break Streamlit's rewrites."""
    return html.unescape(re.sub(r"</?p>", "", rendered)).replace(safe.JOINER, "")


@pytest.mark.parametrize("raw", [HOSTILE, LINES, "plain words", "", "\\", "tab\there", "ünï ©ode — ✓"])
def test_escaped_text_renders_as_exactly_its_characters(raw: str) -> None:
    rendered = _rendered(safe.escape(raw))
    tags = set(re.findall(r"<(/?\w+)", rendered)) - {"p", "/p"}
    assert tags == set(), f"markup from {raw!r}: {rendered!r}"
    expected = [ln.strip() for ln in raw.splitlines() if ln.strip()]
    assert [ln.strip() for ln in _text_of(rendered).splitlines() if ln.strip()] == expected


# Streamlit's own rewrites of text after parsing (its StreamlitMarkdown.js): links, icons, the logo, arrows.
STREAMLIT_TEXT_REWRITES = [r"(https?:\/\/|www(?=\.))([-.\w]+)([^ \t\r\n]*)", r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)",
                           r":material_(\w+):", r":streamlit:", r"(^|\s)(<->|->|<-|--|>=|<=|~=)(\s|$)"]


def test_escaping_defeats_streamlits_own_extensions() -> None:
    out = safe.escape(HOSTILE)
    assert not re.search(r":[\w+-][\w+-]*:", out)  # Streamlit loads its emoji plugin on this pattern
    assert ":material/" not in out  # rewritten to an icon before parsing
    assert not re.search(r"(?<!\\)\$", out) and not re.search(r"(?<!\\)[\[\]<>`*_~]", out)
    parsed = html.unescape(re.sub(r"</?p>", "", _rendered(out)))  # what those rewrites see: escapes resolved
    for pattern in STREAMLIT_TEXT_REWRITES:
        assert not re.search(pattern, parsed, re.I), pattern
    assert re.search(STREAMLIT_TEXT_REWRITES[0], HOSTILE) and re.search(STREAMLIT_TEXT_REWRITES[1], HOSTILE)


def test_developer_markdown_keeps_its_markup_and_escapes_its_arguments() -> None:
    m = safe.md_format("**{}** · {:,} op(s)", "<b>x</b> [a](b)", 12345)
    assert m == "**\\<b\\>x\\<\\/b\\> \\[a\\]\\(b\\)** · 12,345 op(s)" and isinstance(m, safe.Md)
    assert safe.label(m) is m and safe.escape(m) is m
    assert safe.md("**a**") + "*b*" == "**a**\\*b\\*" and isinstance(safe.md("x") + "y", safe.Md)
    assert "_x_" + safe.md("**y**") == "\\_x\\_**y**"
    with pytest.raises(ValueError, match="code span"):
        safe.md_format("id `{}`", "x")
    with pytest.raises(ValueError, match="shortcode"):
        safe.md(":smile: hi")
    h = safe.html('<div style="{}">{}</div>', 'a"b', '<a href="http://x">y</a>')
    assert h == '<div style="a&quot;b">&lt;a href=&quot;http://x&quot;&gt;y&lt;/a&gt;</div>'
    assert safe.html("<p>{}</p>", h).count("<div") == 1  # an Html argument is kept
    with pytest.raises(TypeError):
        safe.show_html("<b>x</b>")  # type: ignore[arg-type]
    assert safe.plotly_text('<a href="http://x">y</a>') == '&lt;a href="http://x"&gt;y&lt;/a&gt;'


def _helpers_page() -> None:
    import streamlit as st

    from tests.test_ui_safety import HOSTILE
    from ui import safe

    for sink in (safe.markdown, safe.caption, safe.error, safe.warning, safe.info, safe.success, safe.title,
                 safe.header, safe.subheader, safe.heading):
        sink(HOSTILE)
    safe.text(HOSTILE)
    safe.code(HOSTILE)
    with st.expander(safe.label(HOSTILE)):
        st.button(safe.label(HOSTILE), help=safe.label(HOSTILE))
    st.metric(safe.label(HOSTILE), safe.label(HOSTILE))
    st.radio("r", [HOSTILE], format_func=safe.label)
    safe.show_html(safe.html("<div>{}</div>", HOSTILE))


def test_each_helper_hands_streamlit_the_escaped_text() -> None:
    at = AppTest.from_function(_helpers_page, default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    escaped = safe.escape(HOSTILE)
    bodies = {t: [str(n.value) for n in getattr(at, t)]
              for t in ("markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader")}
    assert all(len(v) >= 1 for v in bodies.values()), bodies
    for t, values in bodies.items():
        for v in values:
            assert v.endswith(escaped), (t, v)  # heading adds "#### " before it
            tags = set(re.findall(r"<(/?\w+)", _rendered(v))) - {"p", "/p", "h1", "/h1", "h2", "/h2", "h3", "/h3",
                                                                   "h4", "/h4"}
            assert tags == set(), (t, v)  # no link, image, emphasis, code or HTML
    assert [t.value for t in at.text] == [HOSTILE] and [c.value for c in at.code] == [HOSTILE]
    assert at.expander[0].label == escaped and at.button[0].label == escaped and at.button[0].help == escaped
    assert at.metric[0].label == escaped and at.metric[0].value == escaped
    assert at.radio[0].options == [escaped] and at.radio[0].value == HOSTILE
    shown = str(at.get("html")[0].proto)
    assert "<a " not in shown and "&lt;a href=" in shown and "<img" not in shown


# ------------------------------------------------------------------ the pages, on hostile data
def hostile_bullet(base: str) -> str:
    """A bullet as a model, an import or an agent could write it: a remote image, links, an overlay, markup."""
    return (f"![px]({base}/pixel.png) [click]({base}/x) "
            f'<a href="{base}/y" style="position:fixed;inset:0">overlay</a> :red[alert] $x^2$')


def hostile_id(base: str) -> str:
    return f'<a href="{base}/z" style="position:fixed;inset:0;z-index:9999">hostile-id</a>'


def hostile_why(base: str) -> str:
    return f"because [see]({base}/why) ![w]({base}/why.png) :red[now] $y$ **loud**"


def seed_hostile(base: str) -> dict[str, str]:
    """A playbook with a hostile bullet; an episode whose trace, reflection and model calls carry hostile text;
    its pending delta with a REMOVE of a hostile id, a TAG with a hostile why, and more. Rows are written as
    stored data (what older versions or a careless writer left), past any validation at the door."""
    from core import playbook as P
    from core.storage.db import write_session
    from core.storage.models import Delta, DeltaOp, Episode, Event, LLMCall, Playbook, Reflection

    bullet, bad_id, why = hostile_bullet(base), hostile_id(base), hostile_why(base)
    P.get_or_create_playbook("hostile")
    bid = P.apply_delta("hostile", [{"type": "ADD", "section": "pitfalls", "content": bullet}]).results[0].bullet_id
    assert bid is not None
    ep, delta = "ep-hostile", "d-hostile"
    with write_session() as s:
        name = f"pb [l]({base}/pb) :red[x]"
        s.add(Playbook(id=name, name=name))
        s.add(Episode(id=ep, playbook_id="hostile", task=f"Task {why}", status="succeeded", success=True, attempts=1,
                      model=f"model {why}", review_mode="manual", delta_id=delta, error=f"Error {why}", tokens=42))
        s.flush()
        s.add(Delta(id=delta, playbook_id="hostile", episode_id=ep, reasoning=f"Curator {why}",
                    dropped=[{"op": {"type": "ADD", "content": why}, "reason": why}]))
        s.flush()
        s.add_all([
            DeltaOp(delta_id=delta, seq=0, type="REMOVE", bullet_id=bad_id, justification=why, evidence=why),
            DeltaOp(delta_id=delta, seq=1, type="TAG", bullet_id=bid, tag="helpful", justification=why, evidence=why),
            DeltaOp(delta_id=delta, seq=2, type="MERGE", bullet_ids=[bad_id, bid], content=bullet, justification=why),
            DeltaOp(delta_id=delta, seq=3, type="UPDATE", bullet_id=bid, before=bullet, content=f"{bullet} [more]"),
            DeltaOp(delta_id=delta, seq=4, type="ADD", section=why, content=bullet, decision="rejected",
                    decided_by=why, note=why),
        ])
        call = LLMCall(episode_id=ep, role=f"gen {why}", model=why, response=bullet, error=why, mode="json_schema",
                       finish_reason=why, messages=[{"role": "user", "content": f"[{bid}] {bullet}"}])
        s.add(call)
        s.flush()
        events: list[tuple[str, dict]] = [
            ("route", {"playbook_id": "hostile", "reason": why, "mode": "llm", "backend": why, "review_mode": why}),
            ("generate", {"reasoning": why, "code": "print(1)", "bullet_ids": [bid], "role": "generator",
                          "retrieved": [{"id": bid, "score": 1.0, "scores": {}}], "call_ids": [call.id],
                          "messages": [{"role": why, "content": f"[{bid}] {bullet}\n{why}"}]}),
            ("execute", {"code": "print(1)", "language": "python", "isolation": why,
                         "execution": {"exit_code": 1, "logs": {"stdout": [why], "stderr": []},
                                       "error": {"name": "E", "value": why, "traceback": why}}}),
            ("evaluate", {"passed": False, "total": 2, "failed": [why]}),
            ("reflect", {"role": why, "reflection": {"key_insight": why, "bullet_tags": [{"id": bid, "tag": why}]}}),
            ("curate", {"curation": {"reasoning": why, "operations": [{"type": "TAG", "bullet_id": bid, "tag": why},
                                                                      {"type": "REMOVE", "bullet_id": bad_id}]},
                        "dropped": [{"op": {"type": "ADD", "content": why}, "reason": why}]}),
            ("apply", {"delta_id": delta, "operations": 5, "status": "pending"}),
            ("apply", {"delta_id": why, "version": why, "results": [{"type": "REMOVE", "bullet_id": bad_id}]}),
            ("error", {"message": why}),
        ]
        s.add_all([Event(episode_id=ep, seq=i, kind=k, payload=p, duration_ms=12.0, attempt=1)
                   for i, (k, p) in enumerate(events, start=1)])
        s.add(Reflection(episode_id=ep, playbook_id="hostile", reasoning=why, error_identification=why,
                         root_cause_analysis=why, correct_approach=why, key_insight=why,
                         bullet_tags=[{"id": bid, "tag": "helpful"}, {"id": bad_id, "tag": why}]))
    return {"playbook": "hostile", "episode": ep, "delta": delta, "bullet": bullet, "bullet_id": bid,
            "bad_id": bad_id, "why": why, "odd_playbook": name}


MARKDOWN_TYPES = {"markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader",
                  "toast"}


def markdown_sources(at: AppTest) -> list[tuple[str, str]]:
    """(where, markdown source) of everything on the page that Streamlit renders as markdown."""
    out = []
    node: Any
    for node in at:
        t = getattr(node, "type", "")
        if t in MARKDOWN_TYPES:
            out.append((t, str(node.value)))
        for attr in ("label", "help"):
            if isinstance(v := getattr(node, attr, None), str) and v:
                out.append((f"{t}.{attr}", v))
        if t == "metric":
            out.append(("metric.value", str(node.value)))
        if t == "radio":
            out += [("radio.option", str(o)) for o in node.options]
        if t == "page_link":
            out.append(("page_link", node.proto.label))
    return out


def assert_no_markup(at: AppTest) -> None:
    for where, src in markdown_sources(at):
        rendered = _rendered(src)
        assert not re.search(r"<(a|img)\b", rendered), (where, src)  # no link, no remote image
        assert not re.search(r"(?<!\\)(\$|:red\[|<)", src), (where, src)  # no math, directive or HTML
        parsed = html.unescape(re.sub(r"<[^>]+>", "", rendered))
        assert not [p for p in STREAMLIT_TEXT_REWRITES if re.search(p, parsed, re.I)], (where, src)  # autolinks
    for node in at.get("html"):
        assert not re.search(r"<\s*(a|img)\b", node.proto.body, re.I), node.proto.body


_page = open_app


def test_hostile_text_on_every_page_is_only_text(db_url) -> None:
    seeded = seed_hostile("http://127.0.0.1:9")
    bullet, bid = seeded["bullet"], seeded["bullet_id"]
    pages = {"app_pages/playbook.py": {"playbook": "hostile", "delta": "d-hostile"},
             "app_pages/trace.py": {"episode": "ep-hostile"}, "app_pages/reflection.py": {"episode": "ep-hostile"},
             "app_pages/learning.py": {}, "app_pages/playground.py": {}, "app_pages/benchmarks.py": {}}
    shown: dict[str, list[str]] = {}
    for page, params in pages.items():
        at = _page(page, **params)
        assert_no_markup(at)
        shown[page] = [str(t.value) for t in at.text] + [str(c.value) for c in at.code]
    assert f"[{bid}] {bullet} → helpful +1" in shown["app_pages/playbook.py"]  # the TAG op, literally
    assert f"👍 helpful [{bid}] {bullet}" in shown["app_pages/reflection.py"]
    assert any(seeded["why"] in t for t in shown["app_pages/trace.py"])
    at = _page("app_pages/playbook.py", playbook=seeded["odd_playbook"])
    assert_no_markup(at)
