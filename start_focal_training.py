"""Clear every __pycache__ under the project, then train with the same arguments.

    python start_focal_training.py --time-limit 20
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def clear_caches(root: Path = ROOT) -> int:
    caches = [p for p in root.rglob("__pycache__") if p.is_dir() and ".venv" not in p.parts]
    for cache in caches:
        shutil.rmtree(cache, ignore_errors=True)
    return len(caches)


def main(argv: list[str]) -> int:
    print(f"removed {clear_caches()} __pycache__ folder(s)", flush=True)
    command = [sys.executable, str(ROOT / "caocrvfy" / "train.py"), *argv]
    if os.name != "posix":
        return subprocess.call(command)
    # The training takes this process's place, so a signal sent to it (kill, a job
    # scheduler's stop) stops the training instead of leaving it running on its own.
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
