"""experiments/quickstart.ipynb runs top to bottom (as a tiny run).

The notebook's training cell is given a copy of the session's tiny run with
its own settings, so it resumes a finished run (what re-running the cell
does) and the rest of the notebook reads that checkpoint."""

import json
import os
import pathlib
import shutil

import nbformat
from nbclient import NotebookClient
from helpers import TINY

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tiny_run, tmp_path):
    shutil.copytree(tiny_run[0], tmp_path / "run")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = "\n".join([
        f"WORKDIR = {str(tmp_path / 'run')!r}",
        "NUM_STEPS = 2",
        f"CONFIG_OVERRIDES = {dict(TINY, num_steps=2)!r}",
        "PROBE_EPOCHS = 1",
        "PHOTOS_PER_SPLIT = 48",
    ])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")        # the kernel inherits it
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "image/png" in o.get("data", {})]
    assert len(figures) >= 5        # scenes, curves, 2 x predictions, probes
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == 2
    for name in ("pretrained", "random_init"):
        probe = json.loads((tmp_path / "run" / f"probe_{name}" / "probe.json").read_text())
        assert set(probe) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
