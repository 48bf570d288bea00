"""``hpbroker-bench``: throughput and latency measurements with same-run baselines.

Each component benchmark lives in its own module here and exposes
``register(subparsers)``.  Every figure is printed beside the baseline it was
measured against in the same run; ``--json`` prints one JSON object.

With no suite name (``hpbroker-bench [OPTIONS]``) the end-to-end suite runs
(``e2e``, docs/performance.md); ``hpbroker-bench log`` and ``hpbroker-bench
ring`` run the component suites, ``hpbroker-bench groups`` the consumer
groups (docs/performance.md, "Consumer groups").
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys



def suite_modules() -> list[str]:
    import hpbroker.bench as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpbroker-bench", description="hpbroker benchmarks; with no SUITE the end-to-end suite (e2e) runs with the options given")
    sub = parser.add_subparsers(dest="suite", metavar="SUITE")
    sub.required = True
    for name in suite_modules():
        importlib.import_module(f"hpbroker.bench.{name}").register(sub)
    return parser


DEFAULT_SUITE = "e2e"


def with_default_suite(argv: list[str]) -> list[str]:
    """``argv`` with ``e2e`` in front when it does not start with a suite
    name (or top-level ``-h``/``--help``)."""
    if argv and (argv[0] in suite_modules() or argv[0] in ("-h", "--help")):
        return argv
    return [DEFAULT_SUITE, *argv]


def main(argv: list[str] | None = None) -> int:
    argv = with_default_suite(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)

    def on_term(signum, frame):
        raise KeyboardInterrupt  # unwind through the cleanup: stop the private broker, remove temp dirs

    signal.signal(signal.SIGTERM, on_term)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError) as e:
        print(f"hpbroker-bench {args.suite}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
