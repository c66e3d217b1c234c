"""`ace playbook`: show, export, import, diff and restore playbooks from a shell."""

import argparse
from pathlib import Path
from typing import Any, Optional

from core.cli.exits import EXIT_OK, EXIT_USAGE, fail
from core.cli.inputs import BadInput, count, one_line, read_bytes, writable


def playbook_id(value: Optional[str]) -> Optional[str]:
    """A playbook id argument, checked (None passes): a bad one is bad input, not a crash later."""
    from core.playbook import validate_playbook_id

    if value is None:
        return None
    try:
        return validate_playbook_id(value)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def existing_playbook(value: str) -> Any:
    """The playbook a command reads: a valid id of one that exists, else bad input."""
    from core import playbook as P

    pb = P.get_playbook(playbook_id(value) or value)
    if pb is None:
        raise BadInput(f"playbook {value!r} does not exist")
    return pb


def _version(pb: Any, number: int) -> int:
    if number > pb.current_version:
        raise BadInput(f"playbook {pb.id!r} has no version {number} (latest is {pb.current_version})")
    return number


def add_playbook_arguments(pb: argparse.ArgumentParser) -> None:
    """The subcommands, kept beside the code that runs them."""
    pbs = pb.add_subparsers(dest="pb_cmd", required=True, metavar="SUBCOMMAND")
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
    x.add_argument("a", type=count)
    x.add_argument("b", type=count)
    x = pbs.add_parser("restore", help="make an old version current (as a new version)")
    x.add_argument("id")
    x.add_argument("version", type=count)


def cmd_playbook(a: argparse.Namespace) -> int:
    """Run one playbook subcommand; the playbook modules load only when a playbook command runs.

    Every input is checked before anything is written: the id, that the playbook exists (except for
    an import, which creates it), the versions, the files.
    """
    from core import playbook as P
    from core.playbook import portability as X
    from core.playbook import versions as V
    from core.playbook.ops import DeltaError

    try:
        if a.pb_cmd == "list":
            for pb in P.list_playbooks():
                print(f"{pb.id:24} v{pb.current_version:<5} {P.count_bullets(pb.id):6} bullets  {pb.name}")
        elif a.pb_cmd == "show":
            print(P.render(existing_playbook(a.id), P.active_bullets(a.id)))
        elif a.pb_cmd == "export":
            existing_playbook(a.id)
            writable(a.output, "--output")
            text = X.export_json(a.id) if a.format == "json" else X.export_markdown(a.id)
            if a.output:
                try:
                    Path(a.output).write_text(text)
                except OSError as exc:
                    raise BadInput(f"cannot write {a.output}: {exc.strerror or exc}") from None
                print(f"wrote {a.output}")
            else:
                print(text)
        elif a.pb_cmd == "import":
            playbook_id(a.id)
            data = read_bytes(a.file, "import file", X.MAX_IMPORT_BYTES)
            if b"\x00" in data:
                raise BadInput(f"{a.file} (import file) holds a NUL byte (at byte {data.index(0)})")
            try:
                n, v = X.import_playbook(a.id, data, replace=a.replace, actor="cli")
            except RecursionError:
                raise BadInput(f"{a.file}: nesting too deep to read") from None
            print(f"imported {n} bullets into {a.id}: version {v}")
        elif a.pb_cmd == "versions":
            existing_playbook(a.id)
            for ver in V.list_versions(a.id):
                print(f"v{ver.number:<5} {ver.created_at:%Y-%m-%d %H:%M}  {ver.bullet_count:6} bullets  {ver.summary}")
        elif a.pb_cmd == "diff":
            pb = existing_playbook(a.id)
            d = V.diff_versions(a.id, _version(pb, a.a), _version(pb, a.b))
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
            _version(existing_playbook(a.id), a.version)
            print(f"restored version {a.version} as version {V.restore_version(a.id, a.version, actor='cli')}")
    except (DeltaError, KeyError, ValueError) as exc:  # the domain's own word on bad input (Invalid is a ValueError)
        return fail(one_line(str(exc).strip("'\"")), EXIT_USAGE)
    return EXIT_OK
