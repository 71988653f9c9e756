"""Benchmarks run end to end at toy size, so that a change to the package cannot leave them broken
until their next long run."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fidelity_benchmark_curve_scores_what_the_run_scores(fmnist_root, tmp_path):
    """`bench/fidelity_wrn.py` with a small CNN, one step and two seeds: every curve point and the
    summary over seeds are printed, and the curve's last point (its own pass over the test set) equals
    the run's own evaluation of the same models, which fails when the curve feeds the models other
    inputs than evaluation does."""
    done = subprocess.run(
        [sys.executable, "bench/fidelity_wrn.py", "--methods", "bmb", "--seeds", "0", "1", "--steps", "1",
         "--every", "1", "--out", str(tmp_path), "--set", "model=small_cnn", f"dataset.root={fmnist_root}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checks = re.findall(r"EMA ([\d.]+), raw ([\d.]+) \(the curve's bal head: ([\d.]+), ([\d.]+)\)", done.stdout)
    assert len(checks) == 2, done.stdout
    for ema, online, curve_ema, curve_online in checks:
        assert (ema, online) == (curve_ema, curve_online)
    assert "bmb: 2 seeds (0, 1)" in done.stdout
    assert (tmp_path / "bmb-seed1" / "fidelity.jsonl").exists()
