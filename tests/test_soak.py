"""Smoke test of `make soak`: one short round of every fault, so the soak cannot rot.

The full soak runs for minutes (docs/RELIABILITY.md); this runs each kind of fault once, for
2 to 3 seconds, and checks what the soak itself promises: every process alive, no duplicate,
no garbage stored, and the history complete after backfill.
"""

import json
import os
import secrets
import subprocess
import sys

from tests.conftest import ROOT
from tests.soak import FAULTS


def test_soak_survives_one_round_of_every_fault(tmp_path):
    report = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.soak",
            "--seconds=0",
            "--min-fault=2",
            "--max-fault=3",
            "--max-quiet=1.5",
            f"--database=tracker_soak_smoke_{os.getpid()}_{secrets.token_hex(3)}",
            f"--json={report}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(report.read_text())
    assert sorted(fault["kind"] for fault in results["faults"]) == sorted(FAULTS)
    assert results["duplicates"] == 0 and results["dead_processes"] == 0
    assert results["garbage_sent"] > 0 and results["garbage_stored"] == 0
    for ticker in results["tickers"].values():
        assert ticker["coverage_after"] == 100, results
        assert ticker["backfill_slots"] > 0  # the faults made holes, and they were filled
    for fault in results["faults"]:
        assert fault["live_again_s"] is not None and fault["filled_s"] is not None, fault
    assert "hole filled s" in done.stdout
