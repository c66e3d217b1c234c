"""Code a model wrote without fences: telling a program from the prose around it.

A weak model may answer with the program alone, or put a sentence before it ("Here is the solution:")
and one after it. Unfenced text is taken as code only when it clearly is: Python that parses into
real statements with few sentences among its statement lines, JavaScript or shell with the marks of
a program and no sentence at all. Every check is linear in the reply's length; `ast.parse` sees
at most `MAX_PARSED` characters, once or twice per reply, and whatever it raises means "not Python".
"""

import ast
import re
import textwrap
from typing import Optional

MAX_PARSED = 200_000  # longer text is never handed to ast.parse: it is not taken as Python
MAX_LINE_CHARS = 2000  # a longer line is judged by its start
MAX_LABEL_CHARS = 80

# Words that start a statement: a line beginning with one is code, however much it reads like prose.
STATEMENT_WORDS = frozenset({
    "def", "class", "if", "elif", "else", "for", "while", "with", "try", "except", "finally", "return", "import",
    "from", "raise", "assert", "del", "global", "nonlocal", "pass", "break", "continue", "async", "await",
    "lambda", "yield", "match", "case",  # Python
    "function", "const", "let", "var", "switch", "catch", "throw", "new", "do", "export",  # JavaScript
    "then", "fi", "done", "esac", "local",  # shell
})
_PLAIN_WORD = re.compile(r"\(?[A-Za-z][A-Za-z'’-]*[,.;:!?)]*")  # fullmatch on one whitespace-separated token
_NOT_PROSE_START = tuple("#/*-\"'`<>{}[]|$@%=+.;\\")
_LABEL_CODE_CHARS = frozenset("=;{}[]$`\"<>|&\\")

_JS_MARKS = re.compile(
    r"\bfunction\b[ \t]*[\w$]*[ \t]*\(|=>|\b(?:const|let|var)[ \t]+[\w$]+[ \t]*[=;,]|\b(?:const|let|var)[ \t]*[\[{]"
    r"|\bconsole\.\w+[ \t]*\(|\brequire[ \t]*\(|\bprocess\.\w|;[ \t]*$", re.M)
_SH_MARKS = re.compile(
    r"\A#!|^[ \t]*(?:fi|done|esac)\b|\b(?:then|do)[ \t]*$|;[ \t]*(?:then|do|done|fi)\b|\b(?:echo|printf|export|local)"
    r"[ \t]|\$[({\w@#?]|&&|\|\||^[ \t]*[A-Za-z_]\w*=\S", re.M)
MARKS: dict[Optional[str], re.Pattern[str]] = {"javascript": _JS_MARKS, "bash": _SH_MARKS}


def is_sentence(line: str) -> bool:
    """A line of prose: mostly plain words, ending like a sentence (or long), and neither a comment nor a
    statement. `I don't know how to solve this.` is one; `for f in *.txt; do` and `return a + b;` are not."""
    s = line.strip()[:MAX_LINE_CHARS]
    if not s or s.startswith(_NOT_PROSE_START):
        return False
    tokens = s.split()
    plain = sum(1 for t in tokens if _PLAIN_WORD.fullmatch(t))
    if plain < 3 or plain < 0.6 * len(tokens):
        return False
    if s[-1] in ".!?":
        return True
    if tokens[0].rstrip(",;:") in STATEMENT_WORDS:  # lower case: `If you want:` is prose, `if x:` is not
        return False
    return s[-1] == ":" or (plain >= 5 and plain >= 0.8 * len(tokens))


def is_label(line: str) -> bool:
    """A short heading before code, like `Solution:` or `**Python code:**` (never `else:` or `case 1:`)."""
    s = line.strip()[: MAX_LABEL_CHARS + 10].strip("*_#> \t").rstrip("*_ \t")
    if not s.endswith(":") or len(s) > MAX_LABEL_CHARS or _LABEL_CODE_CHARS & set(s):
        return False
    first = s.split()[0].rstrip(":")
    return first[:1].isalpha() and first not in STATEMENT_WORDS


def _aside(line: str) -> bool:
    """A line around a program that is not part of it: blank, a sentence or a label."""
    return not line.strip() or is_sentence(line) or is_label(line)


def parse_python(code: str) -> Optional[ast.Module]:
    """The module `code` is, or None: never raises, and never parses more than MAX_PARSED characters."""
    if len(code) > MAX_PARSED:
        return None
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError):
        return None


def _statement_like(node: ast.stmt) -> bool:
    """A statement only a program has: not a bare name or comparison (`Yes`, `x is y`), not a bare
    annotation (`Complexity: O(n)`)."""
    if isinstance(node, ast.Expr):
        return isinstance(node.value, ast.Call | ast.Await | ast.Yield | ast.YieldFrom)
    if isinstance(node, ast.AnnAssign):
        return node.value is not None
    return not isinstance(node, ast.Pass)


def is_python(code: str) -> bool:
    """Python that parses into at least one real statement, with sentences on few of its statement lines."""
    code = textwrap.dedent(code)
    tree = parse_python(code)
    if tree is None or not any(_statement_like(n) for n in tree.body):
        return False
    lines = code.splitlines()
    starts = {n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt)}
    prose = sum(1 for i in starts if i <= len(lines) and is_sentence(lines[i - 1]))
    return prose * 4 < len(starts)


def is_marked_code(code: str, language: Optional[str]) -> bool:
    """JavaScript or shell (or either, for another language) with the marks of a program, and no sentence."""
    marks = MARKS.get(language)
    found = marks.search(code) if marks else (_JS_MARKS.search(code) or _SH_MARKS.search(code))
    return found is not None and not any(is_sentence(line) for line in code.splitlines())


def is_code(code: str, language: Optional[str]) -> bool:
    body = textwrap.dedent(code).strip()
    if not body or body.startswith(("{", "[")):
        return False
    if language == "python":
        return is_python(body)
    return (language is None and is_python(body)) or is_marked_code(body, language)


def looks_like_code(text: str, language: Optional[str] = None) -> bool:
    """A reply that is all program and no prose."""
    return is_code(text, language)


def unfenced_code(text: str, language: Optional[str] = None) -> Optional[str]:
    """The program in a reply without fences: the reply less the sentences and labels before it and after
    it; None when what is left is not code (prose between two parts of a program is not cut out: a
    program cut short would run as if it were the answer). `ast.parse` runs at most once."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if not _aside(line)), len(lines))
    end = len(lines)
    while end > start and _aside(lines[end - 1]):
        end -= 1
    chunk = "\n".join(lines[start:end])
    return chunk if chunk and is_code(chunk, language) else None
