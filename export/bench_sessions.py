"""Many players on one machine: `worldsim bench --sessions` under its old name (the measuring code lives in
engine/bench_sessions.py; imports flow worldsim <- engine <- export).

    python -m export.bench_sessions --tiny --sessions 1,2,4,8
    python -m export.bench_sessions --world BUNDLE --sessions 1,2,4,8 --threads 1

Defaults differ from `worldsim bench`: sessions 1,2,4,8 on onnxruntime, preset fast.
"""

from __future__ import annotations

import argparse
import sys

from engine.bench_sessions import HEADER, bench_sessions, format_row  # noqa: F401  (re-exported for demos/gpu_path.py)


def main(argv: list[str] | None = None) -> int:
    """CLI: `worldsim bench --sessions 1,2,4,8 --backends onnxruntime --presets fast` with these defaults."""
    from engine import bench

    p = argparse.ArgumentParser(prog="python -m export.bench_sessions", description=__doc__.split("\n\n")[0])
    bench.add_arguments(p)
    p.set_defaults(sessions="1,2,4,8", backends="onnxruntime", presets="fast")
    return bench.run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
