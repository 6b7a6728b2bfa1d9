"""The issue's acceptance test: a reader looping over a dataset while it is republished and
the publisher is SIGKILLed at random moments never sees a mixed or a missing version, on
the local disk and on the real S3 server."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import numpy as np
import pytest
import tifffile

import cloudmic
from cloudmic.ingest import ingest
from cloudmic.ingest.verify import verify_dataset
from cloudmic.storage.location import Location

KILLS = 10
VARIANTS = ("uint16", "float32")


def _first_pair(src) -> tuple[np.ndarray, np.ndarray]:
    mt = src / "BioSR" / "Microtubules"
    stem = sorted(p.stem for p in (mt / "training_gt").glob("*.tif"))[0]
    return (tifffile.imread(mt / "training_wf" / f"{stem}.tif"),
            tifffile.imread(mt / "training_gt" / f"{stem}.tif"))


class Reader(threading.Thread):
    """Opens the dataset again and again, as a notebook or a new training run would, and
    checks that wf and gt of one sample come from one published variant, byte-exact."""

    def __init__(self, url: str, expected: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        super().__init__(daemon=True)
        self.url, self.expected = url, expected
        self.stop, self.seen, self.problems = threading.Event(), Counter(), []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                ds = cloudmic.open(self.url)["train"].ds
                wf, gt = ds["wf"][0].values, ds["gt"][0].values
            except Exception as exc:  # a missing or half-written version
                self.problems.append(f"{type(exc).__name__}: {exc}")
                continue
            variant = str(wf.dtype)
            want = self.expected.get(variant)
            if want is None or not (np.array_equal(wf, want[0]) and np.array_equal(gt, want[1])
                                    and gt.dtype == want[1].dtype):
                self.problems.append(f"mixed: wf {wf.dtype} with gt {gt.dtype}")
            self.seen[variant] += 1


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["local", "s3"])
def test_reader_never_sees_a_mixed_or_missing_version_while_publishers_are_killed(
        where, request, tmp_path, biosr_sources, small_manifest):
    if where == "s3":
        request.getfixturevalue("s3_env")  # the killed CLI runs inherit AWS_*
        root = f"s3://k-{uuid.uuid4().hex[:10]}"
    else:
        root = str(tmp_path / "root")
    ingest(str(small_manifest), biosr_sources["uint16"], root)
    url = f"{root}/biosr.zarr"
    reader = Reader(url, {v: _first_pair(biosr_sources[v]) for v in VARIANTS})
    reader.start()
    rnd, outcomes = random.Random(7), Counter()
    cmd = [sys.executable, "-m", "cloudmic.cli", "ingest", str(small_manifest), "--dest", root,
           "--in-process", "--workers", "1", "-q", "--source"]
    t0 = time.monotonic()
    full = subprocess.run([*cmd, str(biosr_sources["float32"])], capture_output=True,
                          text=True, env=os.environ.copy())
    assert full.returncode == 0, full.stderr
    duration = time.monotonic() - t0
    i = -1
    while outcomes["killed"] < KILLS and i < 3 * KILLS:
        i += 1
        proc = subprocess.Popen([*cmd, str(biosr_sources[VARIANTS[i % 2]])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 4 == 3:  # every fourth run finishes: the reader must see the switches too
            outcomes["finished" if proc.wait() == 0 else "failed"] += 1
            continue
        # any moment from imports to the catalog write; resumed runs finish sooner
        time.sleep(rnd.uniform(0.2, duration * 1.3))
        proc.kill()
        outcomes["finished" if proc.wait() == 0 else "killed"] += 1
    reader.stop.set()
    reader.join(60)
    assert reader.problems == [], reader.problems[:5]
    assert outcomes["killed"] >= KILLS and outcomes["finished"] >= 2, outcomes
    assert not outcomes["failed"], outcomes
    assert sum(reader.seen.values()) >= KILLS, reader.seen
    # the last command run to completion publishes and verifies; earlier runs' leftovers
    # (staging of killed runs, incomplete versions) never disturb it
    ingest(str(small_manifest), biosr_sources["uint16"], root)
    assert verify_dataset(Location.parse(root), "biosr").ok
    print(f"{where}: {outcomes['killed']} kills, {outcomes['finished']} finished, "
          f"{sum(reader.seen.values())} reads ({dict(reader.seen)}), 0 mixed or missing")
