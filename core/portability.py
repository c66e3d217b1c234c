"""Import and export (`core.playbook.portability`), where the README finds them: `from core import portability`."""

from core.playbook.portability import (
    FORMAT_TAG,
    MAX_IMPORT_BYTES,
    ImportedBullet,
    export_json,
    export_markdown,
    import_playbook,
    parse,
    parse_kayba,
    parse_ours,
    parse_text,
)

__all__ = ["FORMAT_TAG", "MAX_IMPORT_BYTES", "ImportedBullet", "export_json", "export_markdown", "import_playbook",
           "parse", "parse_kayba", "parse_ours", "parse_text"]
