"""`moeperf bench [PYTEST ARGS]`: the pytest-benchmark suite shipped in moeperf.bench, run by
pytest in a child process (`--benchmark-only`; the other arguments go to pytest as given)."""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCH_ARGS = ["-p", "moeperf.bench.plugin", "--pyargs", "moeperf.bench", "--benchmark-only",
              "-p", "no:cacheprovider"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="run the pytest-benchmark suite (pytest arguments follow)",
        description="Runs `pytest -p moeperf.bench.plugin --pyargs moeperf.bench "
                    "--benchmark-only [ARGS]`: e.g. --moeperf-impl A,B, --moeperf-size large, "
                    "--benchmark-json FILE, -k EXPR.")
    p.add_argument("pytest_args", nargs="*", metavar="ARGS",
                   help="passed to pytest (the suite's options: --moeperf-size, "
                        "--moeperf-device, --moeperf-impl, --moeperf-target-time, "
                        "--moeperf-threads, --moeperf-eager, --moeperf-plugin)")
    p.set_defaults(func=run, pass_through=True)


def ordered(argv: list[str]) -> list[str]:
    """Every argument after `bench`, as given (argparse would split options from values)."""
    return list(argv[argv.index("bench") + 1:])


def command(pytest_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", *BENCH_ARGS, *pytest_args]


def run(args: argparse.Namespace) -> int:
    return subprocess.run(command(args.pytest_args)).returncode
