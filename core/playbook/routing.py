"""Environment routing: which playbook a task learns into when none is named.

Rules are checked in order; the first that matches wins. A user changes them
by writing a JSON list of rules to data/routing.json (or the file named by
ACE_ROUTING_FILE): `[{"environment": "ml", "languages": ["python"],
"pattern": "\\b(train|model)\\b"}, ...]`.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.config import get_settings


@dataclass(frozen=True)
class Rule:
    environment: str
    languages: tuple[str, ...] = ()
    pattern: str = ""

    def matches(self, task: str, language: str) -> bool:
        if self.languages and language not in self.languages:
            return False
        return not self.pattern or re.search(self.pattern, task, re.I) is not None


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("javascript", ("javascript",)),
    Rule("ml", ("python",), r"\b(train(ing)?|model|classifier|regression|neural|sklearn|scikit|torch|"
                            r"accuracy|epochs?|gradient|overfit\w*|feature engineering)\b"),
    Rule("data_analysis", ("python",), r"\b(data ?frame|pandas|csv|dataset|statistics?|mean|median|"
                                       r"aggregate|group ?by|pivot|plot|chart|histogram|correlation)\b"),
    Rule("python", ("python",)),
    Rule("bash", ("bash",)),
)


@dataclass(frozen=True)
class Route:
    environment: str
    reason: str


def load_rules(path: Optional[Path] = None) -> tuple[Rule, ...]:
    path = path or get_settings().routing_file
    if not path.is_file():
        return DEFAULT_RULES
    try:
        raw = json.loads(path.read_text())
        rules = tuple(Rule(str(r["environment"]), tuple(r.get("languages") or ()), str(r.get("pattern") or ""))
                      for r in raw)
        for r in rules:
            re.compile(r.pattern)
        return rules
    except (ValueError, KeyError, TypeError, re.error) as exc:
        raise ValueError(f"routing rules in {path} are invalid: {exc}") from None


def route(task: str, language: str, rules: Optional[tuple[Rule, ...]] = None) -> Route:
    for rule in rules or load_rules():
        if rule.matches(task, language):
            why = [f"language is {language}"] if rule.languages else []
            if rule.pattern:
                m = re.search(rule.pattern, task, re.I)
                why.append(f"the task mentions {m.group(0)!r}" if m else "pattern matched")
            return Route(rule.environment, f"routed to '{rule.environment}': " + " and ".join(why or ["default"]))
    return Route("general", "no routing rule matched; using 'general'")
