"""`make bench`: every benchmark in turn, each printing its figures beside a
baseline measured in the same run. Pass names to run a subset:
`.venv/bin/python bench/run_all.py sandbox loop`."""

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["playbook", "sandbox", "loop", "unreliable", "redaction", "retrieval", "service", "runner", "scale", "ui"]


def main(names: list[str]) -> int:
    failed = []
    for name in names or ORDER:
        script = HERE / f"bench_{name}.py"
        if not script.is_file():
            print(f"\n== {name}: no bench/{script.name}")
            continue
        print(f"\n== {name} ({script.name}) " + "=" * max(0, 60 - len(name)), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"-- {name}: {time.perf_counter() - t0:.0f} s" + ("" if rc == 0 else f", exit {rc}"), flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
