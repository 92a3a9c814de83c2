"""The examples run (at tiny size): each script with --tiny in a fresh process, the notebook with nbclient.
An example whose optional library is not installed is skipped, saying which."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = Path(__file__).resolve().parents[1] / "src"


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", LEARNDYN_PROGRESS="0", LEARNDYN_TINY="1")
    env["WANDB_DISABLED"] = "true"
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize(
    ("script", "needs"),
    [("own_loop.py", None), ("lightning_example.py", "lightning"), ("hf_trainer_example.py", "accelerate")],
)
def test_example_script(script, needs, tmp_path):
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} not installed (pip install 'learndyn[integrations]')")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--tiny", "--out", str(tmp_path)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run " in done.stdout


def test_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (test extra)")
    nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (test extra)")
    if importlib.util.find_spec("ipykernel") is None:
        pytest.skip("ipykernel not installed (test extra)")
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    os.environ.update({k: v for k, v in _env().items() if k in ("LEARNDYN_TINY", "LEARNDYN_PROGRESS")})
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _env()["PYTHONPATH"]
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    html = [o["data"]["text/html"] for o in outputs if "data" in o and "text/html" in o["data"]]
    assert any("notebook-demo" in h for h in html) and any(h.startswith("<iframe srcdoc=") for h in html)
