"""The Python API: what `bmb_stream` exports, and the recipe of docs/python-api.md run as written (fewer steps)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import bmb_stream

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_package_is_quick_and_every_exported_name_resolves():
    loaded = subprocess.run([sys.executable, "-c", "import sys, bmb_stream; print('torch' in sys.modules)"],
                            capture_output=True, text=True, cwd=ROOT, check=True)
    assert loaded.stdout.strip() == "False"
    for name in bmb_stream.__all__:
        assert getattr(bmb_stream, name) is not None, name
    assert sorted(bmb_stream.ALGORITHMS) == ["abc", "bmb", "cdmad", "fixmatch", "supervised"]


def test_the_documented_recipe_runs(tmp_path, fmnist_root, monkeypatch):
    text = (ROOT / "docs" / "python-api.md").read_text()
    recipe = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "train.steps=1000" in recipe and "train.eval_every=100" in recipe
    shorter = recipe.replace("train.steps=1000", "train.steps=10").replace("train.eval_every=100", "train.eval_every=5")
    monkeypatch.chdir(tmp_path)  # the recipe's run.dir is relative
    namespace: dict = {}
    exec(compile(shorter, "docs/python-api.md", "exec"), namespace)
    summary = namespace["summary"]
    assert summary["steps"] == 10 and 0 <= summary["headline"]["balanced_acc"] <= 1
    assert [r["step"] for r in namespace["curve"]] == [5, 10]
    assert json.loads((tmp_path / "runs" / "notebook-bmb" / "summary.json").read_text())["steps"] == 10
