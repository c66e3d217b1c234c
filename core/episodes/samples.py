"""Sample tasks shipped in data/samples.jsonl, one click away in the playground."""

import json
from typing import Any

from core.config import DATA_DIR


def load_samples() -> list[dict[str, Any]]:
    path = DATA_DIR / "samples.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
