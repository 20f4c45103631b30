"""Run every ``bench/bench_*.py`` module's ``main()`` (or only those named on the command line)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(names: list[str]) -> None:
    modules = sorted(info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])
                     if info.name.startswith("bench_"))
    for name in names or modules:
        print(f"== {name}", flush=True)
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
