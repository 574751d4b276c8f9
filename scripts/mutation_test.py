"""Mutation-test one slow module with only the tests that cover it (docs/testing.md).

(stats, verdicts, flops and results take minutes each; they run with pyproject.toml's own
test selection, which `mutmut run` from the repository root also uses for all seven.)

    python scripts/mutation_test.py fits                  # every mutant of analysis/fits.py
    python scripts/mutation_test.py compare "moeperf.analysis.compare.x__memory__*"   # some of them
    python scripts/mutation_test.py claims --children 2
    python scripts/mutation_test.py stats --fresh           # a new copy: the tests changed
    python scripts/mutation_test.py compare --recheck       # its survivors, against new tests

mutmut reads its settings from pyproject.toml only, so the script copies the tree to
`--work` (default moeperf-mutmut-MODULE in the system's temporary folder; the copy and its results are reused unless
`--fresh`), writes a [tool.mutmut] that mutates the one module and runs its tests,
then runs `mutmut run` there and prints the survivors (`mutmut results`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# module: (file, tests, pytest -k expression leaving out the slow tests that do not decide)
MODULES = {
    "fits": ("moeperf/analysis/fits.py", ["tests/analysis/test_analysis.py", "tests/analysis/test_claim_paths.py",
                                          "tests/analysis/test_fits_edges.py"], ""),
    "claims": ("moeperf/analysis/claims.py", ["tests/analysis/test_analysis.py",
                                              "tests/analysis/test_claim_paths.py",
                                              "tests/cli/test_claims_cli.py",
                                              "tests/analysis/test_claims_edges.py",
                                              "tests/report/test_report_families.py"], ""),
    "compare": ("moeperf/analysis/compare.py", ["tests/analysis/test_compare.py", "tests/analysis/test_compare_edges.py",
                                       "tests/analysis/test_compare_decisions.py",
                                       "tests/analysis/test_compare_reading.py",
                                       "tests/analysis/test_compare_matching.py",
                                       "tests/analysis/test_contracts.py"]
                + [f"tests/cli/test_bad_input.py::{t}[compare{c}]" for t, c in (
                    ("test_bad_option_value_is_refused_up_front", " --threshold nan"),
                    ("test_bad_option_value_is_refused_up_front", " --alpha 1"),
                    ("test_bad_option_value_is_refused_up_front", " --fail-on ,"),
                    ("test_other_file_arguments", " binary"),
                    ("test_other_file_arguments", " empty folder"),
                    ("test_output_under_a_file_is_refused_before_the_work", ""))],
                ("not repeatable_across_processes and not same_code_measured_twice "
                 "and not malformed_input")),
}
# The modules whose tests are fast: pyproject.toml's own selection (mutmut runs, per mutant,
# only the tests that reach it).
for _name, _path in (("stats", "moeperf/measure/stats.py"), ("verdicts",
                     "moeperf/analysis/verdicts.py"), ("flops", "moeperf/spec/flops.py"),
                     ("results", "moeperf/results/reader.py")):
    MODULES[_name] = (_path, [], "")
SKIP = shutil.ignore_patterns(".venv", ".ci-venv", "mutants", ".git", "reports", "__pycache__",
                              "*.egg-info", ".pytest_cache", ".benchmarks")


def mutmut_section(module: str, project_tests: list[str]) -> str:
    path, tests, deselect = MODULES[module]
    tests = tests or project_tests
    # each mutant is a pytest session: keep no tmp_path folders (a killed child's lock keeps
    # its folder for 3 days; thousands of them filled the disk of a 250 GB machine)
    args = ["-p", "no:cacheprovider", "-q", "-o", "tmp_path_retention_policy=none"]
    args += ["-k", deselect] if deselect else []
    return ("[tool.mutmut]\n"
            'source_paths = ["moeperf"]\n'
            f"only_mutate = {json.dumps([path])}\n"
            'also_copy = ["kernels", "moeperf_peers"]\n'
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
            f"pytest_add_cli_args = {json.dumps(args)}\n"
            "timeout_multiplier = 4.0\n"
            # torch's thread pool does not survive a fork from a process that used it (the
            # children stalled at 0 s CPU): fork each mutant from a clean server instead
            'process_isolation = "forkserver"\n')


def recheck(module: str, work: Path, project_tests: list[str], only: list[str]) -> int:
    """Rerun an earlier run's survivors and timeouts against the tests as they are now, one
    pytest per mutant through mutmut's own switch (MUTANT_UNDER_TEST); no new run needed."""
    _, tests, deselect = MODULES[module]
    tests = only or tests or project_tests
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=work,
                             capture_output=True, text=True, check=False).stdout
    names = [line.split(":")[0].strip() for line in listing.splitlines()
             if line.rstrip().endswith(("survived", "timeout"))]
    shutil.copytree(ROOT / "tests", work / "mutants" / "tests", ignore=SKIP, dirs_exist_ok=True)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o",
               "tmp_path_retention_policy=none", *tests]
    command += ["-k", deselect] if deselect else []
    survivors = []
    for name in names:
        rc = subprocess.run(command, cwd=work / "mutants", capture_output=True, check=False,
                            env={**os.environ, "MUTANT_UNDER_TEST": name}).returncode
        verdict = {0: "survived", 1: "killed"}.get(rc, f"not decided (pytest exit {rc})")
        print(f"    {name}: {verdict}", flush=True)
        survivors += [name] if rc == 0 else []
    print(f"{len(names)} rechecked: {len(survivors)} survived")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", choices=sorted(MODULES))
    parser.add_argument("mutants", nargs="*", help="mutant names or patterns (default: all)")
    parser.add_argument("--children", type=int, default=1, help="parallel mutants (default 1)")
    parser.add_argument("--work", type=Path, help="folder for the copy")
    parser.add_argument("--fresh", action="store_true",
                        help="delete an earlier copy and its results first")
    parser.add_argument("--recheck", action="store_true",
                        help="rerun the earlier run's survivors against the current tests")
    parser.add_argument("--tests", nargs="+", default=[],
                        help="with --recheck: run these test files instead of the module's")
    args = parser.parse_args()
    work = args.work or Path(tempfile.gettempdir()) / f"moeperf-mutmut-{args.module}"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    if not work.exists():
        shutil.copytree(ROOT, work, ignore=SKIP)
    # the tests as they are now (a reused copy keeps its mutants/ and their results)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=SKIP, dirs_exist_ok=True)
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    head = text.split("[tool.mutmut]")[0]
    project = tomllib.loads(text)["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]
    (work / "pyproject.toml").write_text(head + mutmut_section(args.module, project),
                                         encoding="utf-8")
    if args.recheck:
        return recheck(args.module, work, project, args.tests)
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run(mutmut + ["run", "--max-children", str(args.children), *args.mutants],
                   cwd=work, check=False)
    return subprocess.run(mutmut + ["results"], cwd=work, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
