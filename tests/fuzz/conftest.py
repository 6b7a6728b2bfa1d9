"""Fuzz suite options and the tally of inputs tried.

Examples per parser: CLOUDMIC_FUZZ_EXAMPLES, else 20x the default with ``--fuzz-long``
(usable as ``pytest tests/fuzz --fuzz-long``), else DEFAULT_EXAMPLES. Long runs draw fresh
random inputs (CLOUDMIC_FUZZ_SEED pins them); the default run is derandomized, so CI tries
the same inputs every time. The tally is printed at the end of the session and written as
JSON to CLOUDMIC_FUZZ_REPORT when that is set.
"""

from __future__ import annotations

import json
import os

import pytest

DEFAULT_EXAMPLES = 500
TALLY: dict[str, dict] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="cloudmic fuzz suite: 20x the inputs, freshly random")


@pytest.fixture(scope="session")
def fuzz_examples(pytestconfig: pytest.Config) -> int:
    if os.environ.get("CLOUDMIC_FUZZ_EXAMPLES"):
        return int(os.environ["CLOUDMIC_FUZZ_EXAMPLES"])
    long = pytestconfig.getoption("--fuzz-long", default=False)
    return DEFAULT_EXAMPLES * (20 if long else 1)


@pytest.fixture(scope="session")
def fuzz_seed(pytestconfig: pytest.Config) -> int | None:
    if os.environ.get("CLOUDMIC_FUZZ_SEED"):
        return int(os.environ["CLOUDMIC_FUZZ_SEED"])
    if pytestconfig.getoption("--fuzz-long", default=False):
        return int.from_bytes(os.urandom(4), "little")
    return None


@pytest.fixture
def fuzz_tally() -> dict[str, dict]:
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if not TALLY:
        return
    total = sum(r["tried"] for r in TALLY.values())
    secs = sum(r["seconds"] for r in TALLY.values())
    terminalreporter.write_sep("-", f"cloudmic fuzz: {total:,} inputs tried in {secs:.1f} s")
    for name, r in sorted(TALLY.items()):
        terminalreporter.write_line(
            f"  {name:18} {r['tried']:>7,} inputs  {r['seconds']:>6.1f} s  peak RSS "
            f"{r['peak_rss_mb']} MB (cap: baseline {r['baseline_mb']} MB + 400 MB address space)"
            + ("" if r.get("failure") is None else "  FAILED"))
    if os.environ.get("CLOUDMIC_FUZZ_REPORT"):
        with open(os.environ["CLOUDMIC_FUZZ_REPORT"], "w") as f:
            json.dump({"total_inputs": total, "seconds": secs, "targets": TALLY}, f, indent=1)
