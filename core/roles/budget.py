"""Every role's prompt within its token budget.

A prompt is fixed text (the role's instructions) plus variable parts: the playbook, the task, code,
execution feedback, a reflection. When the messages would pass the budget, the largest parts are cut
first, all of them down to one common length (water-filling), so a 40k-token playbook gives way before
a short traceback does. Text is cut in the middle (head and tail kept, the cut said); a playbook is cut
by whole lines, so no strategy is shown half-written.
"""

import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

from core.tokens import estimate_tokens

MESSAGE_OVERHEAD = 4  # tokens a chat message costs beyond its text (role, separators)
FLOOR_CHARS = 200  # no part is cut below this
INSTRUCTION_SLACK = 64  # the client's own words around a schema it adds to the system message
Messages = list[dict[str, Any]]


def message_tokens(messages: Messages) -> int:
    return sum(estimate_tokens(str(m.get("content") or "")) + MESSAGE_OVERHEAD for m in messages)


def messages_budget(prompt_max_tokens: int, schema: Mapping[str, Any]) -> int:
    """What the role's own messages may take: the prompt cap less the schema the client may append
    (json_object and plain modes put it in the system message)."""
    return prompt_max_tokens - estimate_tokens(json.dumps(schema)) - INSTRUCTION_SLACK


def clip_middle(text: str, limit: int) -> str:
    """At most about `limit` characters: head and tail, the cut said between them."""
    if len(text) <= limit:
        return text
    marker = "\n... [{} characters cut to fit the prompt] ...\n"
    keep = max(limit - len(marker) - 6, 0)
    head = keep * 2 // 3
    tail = keep - head
    cut = len(text) - head - tail
    return text[:head] + marker.format(cut) + (text[len(text) - tail:] if tail else "")


def clip_lines(text: str, limit: int) -> str:
    """At most about `limit` characters of whole lines: most from the head (a playbook's best bullets come
    first), a few from the tail (its end marker, merge hints), the number of lines cut said between."""
    if len(text) <= limit:
        return text
    lines = text.splitlines()
    head_room, tail_room = limit * 4 // 5 - 48, limit // 5
    head: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 1 > head_room:
            break
        head.append(line)
        used += len(line) + 1
    tail: list[str] = []
    used = 0
    for line in reversed(lines[len(head):]):
        if used + len(line) + 1 > tail_room:
            break
        tail.insert(0, line)
        used += len(line) + 1
    cut = len(lines) - len(head) - len(tail)
    if not head and not tail:  # one enormous line
        return clip_middle(text, limit)
    return "\n".join([*head, f"... [{cut} lines cut to fit the prompt] ...", *tail])


def water_level(lengths: list[int], excess: int, floor: int = FLOOR_CHARS) -> int:
    """The longest length every part may keep so that cutting all longer parts to it removes `excess`."""
    ordered = sorted(lengths, reverse=True)
    removed = 0
    for i, length in enumerate(ordered):
        nxt = ordered[i + 1] if i + 1 < len(ordered) else 0
        nxt = max(nxt, floor)
        if length <= nxt:
            continue
        gain = (length - nxt) * (i + 1)
        if removed + gain >= excess:
            return max(floor, length - -(-(excess - removed) // (i + 1)))
        removed += gain
    return floor


def fit(build: Callable[[dict[str, str]], Messages], parts: Mapping[str, str], budget: int,
        by_lines: Collection[str] = ()) -> Messages:
    """`build(parts)`, with the largest parts cut until the messages fit `budget` tokens (or every part is
    down to the floor: the fixed text alone is then over, and nothing more can be cut)."""
    current = dict(parts)
    messages = build(current)
    for _round in range(6):
        over = message_tokens(messages) - budget
        if over <= 0:
            break
        lengths = [len(v) for v in current.values()]
        if not lengths or max(lengths) <= FLOOR_CHARS:
            break
        cap = water_level(lengths, over * 4 + 80 * len(lengths))  # slack for the cut markers
        current = {k: v if len(v) <= cap else (clip_lines(v, cap) if k in by_lines else clip_middle(v, cap))
                   for k, v in current.items()}
        messages = build(current)
    return messages
