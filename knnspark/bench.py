"""``knnspark bench``: the command, a thin entry point to ``benchmarks/harness.py``.

The harness lives in the repository beside the library, not in the installed package (it needs
the peers of the ``bench`` extra and a clone: ``pip install -e ".[bench]"``). Installed without
it, the command still parses and says where to get it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

from knnspark.errors import KnnsparkError

__all__ = ["add_parser", "run_from_args"]


def _harness() -> ModuleType | None:
    """``benchmarks.harness`` of the clone this package runs from, or ``None``."""
    try:
        from benchmarks import harness
    except ImportError:
        root = Path(__file__).resolve().parents[1]
        if not (root / "benchmarks" / "harness.py").is_file():
            return None
        sys.path.insert(0, str(root))
        from benchmarks import harness
    return harness


def add_parser(sub: argparse._SubParsersAction) -> None:
    harness = _harness()
    if harness is not None:
        harness.add_parser(sub)
    else:
        sub.add_parser("bench", help="benchmark knnspark against its peers (needs a clone)")


def run_from_args(args: argparse.Namespace) -> int:
    harness = _harness()
    if harness is None:
        raise KnnsparkError(
            "knnspark bench runs the harness in benchmarks/ of a clone of the repository, which "
            'the installed package does not include: clone it and pip install -e ".[bench]"'
        )
    return harness.run_from_args(args)
