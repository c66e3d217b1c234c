"""`ace playbook`: show, export, import, diff and restore playbooks from a shell."""

import argparse
import sys
from pathlib import Path

from core.cli.exits import EXIT_OK, EXIT_USAGE, fail


def add_playbook_arguments(pb: argparse.ArgumentParser) -> None:
    """The subcommands, kept beside the code that runs them."""
    pbs = pb.add_subparsers(dest="pb_cmd", required=True)
    pbs.add_parser("list", help="all playbooks")
    x = pbs.add_parser("show", help="the playbook as the Generator sees it")
    x.add_argument("id")
    x = pbs.add_parser("export", help="lossless JSON or readable Markdown")
    x.add_argument("id")
    x.add_argument("--format", choices=["json", "markdown"], default="json")
    x.add_argument("-o", "--output")
    x = pbs.add_parser("import", help="our JSON, Markdown, ace-agent text or kayba skillbook JSON")
    x.add_argument("id")
    x.add_argument("file", help="path, or - for stdin")
    x.add_argument("--replace", action="store_true", help="remove the current bullets first")
    x = pbs.add_parser("versions", help="the version history")
    x.add_argument("id")
    x = pbs.add_parser("diff", help="differences between two versions")
    x.add_argument("id")
    x.add_argument("a", type=int)
    x.add_argument("b", type=int)
    x = pbs.add_parser("restore", help="make an old version current (as a new version)")
    x.add_argument("id")
    x.add_argument("version", type=int)


def cmd_playbook(a: argparse.Namespace) -> int:
    """Run one playbook subcommand; the playbook modules load only when a playbook command runs."""
    from core import playbook as P
    from core.playbook import portability as X
    from core.playbook import versions as V
    from core.playbook.ops import DeltaError

    try:
        if a.pb_cmd == "list":
            for pb in P.list_playbooks():
                print(f"{pb.id:24} v{pb.current_version:<5} {P.count_bullets(pb.id):6} bullets  {pb.name}")
        elif a.pb_cmd == "show":
            if P.get_playbook(a.id) is None:
                return fail(f"playbook {a.id!r} does not exist", EXIT_USAGE)
            print(P.render(P.get_playbook(a.id), P.active_bullets(a.id)))
        elif a.pb_cmd == "export":
            text = X.export_json(a.id) if a.format == "json" else X.export_markdown(a.id)
            if a.output:
                Path(a.output).write_text(text)
                print(f"wrote {a.output}")
            else:
                print(text)
        elif a.pb_cmd == "import":
            data = sys.stdin.buffer.read() if a.file == "-" else Path(a.file).read_bytes()
            n, v = X.import_playbook(a.id, data, replace=a.replace, actor="cli")
            print(f"imported {n} bullets into {a.id}: version {v}")
        elif a.pb_cmd == "versions":
            for ver in V.list_versions(a.id):
                print(f"v{ver.number:<5} {ver.created_at:%Y-%m-%d %H:%M}  {ver.bullet_count:6} bullets  {ver.summary}")
        elif a.pb_cmd == "diff":
            d = V.diff_versions(a.id, a.a, a.b)
            for x in d.added:
                print(f"+ [{x.bullet_id}] {x.content}")
            for x in d.removed:
                print(f"- [{x.bullet_id}] {x.content}")
            for before, after in d.changed:
                print(f"~ [{after.bullet_id}] {before.content}\n    -> {after.content}"
                      f"  (helpful {before.helpful}->{after.helpful}, harmful {before.harmful}->{after.harmful})")
            if d.empty:
                print("no differences")
        elif a.pb_cmd == "restore":
            print(f"restored version {a.version} as version {V.restore_version(a.id, a.version, actor='cli')}")
    except (DeltaError, KeyError, ValueError, OSError) as exc:
        return fail(str(exc).strip("'\""), EXIT_USAGE)
    return EXIT_OK
