"""The Colab notebooks: stored clean and well formed, and (slow) each runs top
to bottom headlessly on its offline defaults and shows its plots."""
import glob
import os
import re
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "colab"))
from clean import clean  # noqa: E402
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))
# Run order: the later notebooks reuse the modules the earlier ones made.
EXPECTED = ["pretraining.ipynb", "finetuning.ipynb", "load_and_inference.ipynb",
            "distillation_self_training.ipynb"]
REPO_BADGE = "https://colab.research.google.com/github/simclr-tf2/simclr-tf2/blob/main/colab/"


def test_every_expected_notebook_is_there():
    assert sorted(os.path.basename(p) for p in NOTEBOOKS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_clean_and_formatted(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    notebook = nbformat.reads(text, as_version=4)
    nbformat.validate(notebook)
    # Exactly what colab/clean.py writes (canonical layout, no outputs).
    cleaned = nbformat.writes(clean(nbformat.reads(text, as_version=4)))
    assert text in (cleaned, cleaned + "\n"), "run: python colab/clean.py " + path
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                "stored with outputs: clear them before committing"
        lines = cell.source.split("\n")
        assert all(line == line.rstrip() for line in lines), "trailing whitespace"
        assert cell.source == cell.source.strip("\n"), "blank lines at a cell's edge"
    first = notebook.cells[0].source
    assert REPO_BADGE + os.path.basename(path) in first, "Open in Colab badge"
    install = notebook.cells[1].source
    assert 'find_spec("simclr_tf2") is None' in install and "pip" in install
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "one cell tagged 'parameters'"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def test_clean_removes_outputs_and_editor_metadata():
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    cell = next(c for c in notebook.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", text="hello")]
    cell.execution_count = 7
    cell.metadata["collapsed"] = True
    cell.source += "   \n\n"
    notebook.metadata["widgets"] = {"state": {}}
    dirty = nbformat.writes(notebook)
    cleaned = nbformat.writes(clean(nbformat.reads(dirty, as_version=4)))
    assert cleaned != dirty
    with open(NOTEBOOKS[0], encoding="utf-8") as f:
        assert f.read() in (cleaned, cleaned + "\n")


# Short runs for the tests, set after each notebook's `parameters` cell as
# papermill would: the checks below are about the notebooks working end to
# end, not about their accuracy (the benchmarks measure that).
TEST_EPOCHS = 20  # the fine-tuning notebook's, set explicitly below
TEST_PARAMETERS = {
    "pretraining.ipynb": {"STEPS": 12},
    # The shared pretraining is 24 steps: its loss falls faster at 0.01 than
    # at the notebook's 0.002 (see the check below).
    "finetuning.ipynb": {"LEARNING_RATE": 0.01, "EPOCHS": TEST_EPOCHS},
    "load_and_inference.ipynb": {},
    "distillation_self_training.ipynb": {"STEPS": 16},
}


def _execute(path, workdir, tmp_path, parameters):
    from nbclient import NotebookClient
    notebook = nbformat.read(path, as_version=4)
    tagged = next(i for i, c in enumerate(notebook.cells)
                  if "parameters" in c.metadata.get("tags", []))
    if parameters:
        notebook.cells.insert(tagged + 1, nbformat.v4.new_code_cell(
            "\n".join(f"{name} = {value!r}" for name, value in parameters.items())))
    env_bin = os.path.dirname(sys.executable)  # the kernel runs this interpreter
    os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
    os.environ["SIMCLR_TF2_NOTEBOOK_DIR"] = str(workdir)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    with open(os.path.join(str(tmp_path), "executed_" + os.path.basename(path)), "w") as f:
        nbformat.write(notebook, f)
    return notebook


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_headless_and_shows_plots(name, shared_runs, tmp_path):
    """The notebooks' working directory is the shared runs' root, laid out as
    quickstart.digits_modules makes it: the pretrained and fine-tuned modules
    they need are found there instead of being trained in each notebook."""
    notebook = _execute(os.path.join(ROOT, "colab", name), shared_runs["root"], tmp_path,
                        TEST_PARAMETERS[name])
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "the executed notebook shows no plot"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    checks = {
        "pretraining.ipynb": ["hub modules:"],
        "finetuning.ipynb": ["test top-1:", "regularization loss"],
        "load_and_inference.ipynb": ["logits_sup", "top-3", "TFSMLayer logits_sup max"],
        "distillation_self_training.ipynb": ["distilled student: test top-1",
                                             "labels-only student: test top-1"],
    }[name]
    for expected in checks:
        assert expected in text, f"{expected!r} missing from the output"
    if name == "pretraining.ipynb":
        assert "step 12/12" in text  # the injected parameters took effect
    if name == "load_and_inference.ipynb":
        # Keras 3 and hub.KerasLayer give the module's own numbers.
        for line in text.splitlines():
            if "max |difference|" in line:
                assert float(line.rsplit(" ", 1)[1]) < 1e-4, line
    if name == "finetuning.ipynb":
        after = [line for line in text.splitlines() if line.startswith("test top-1:")][0]
        before, trained = [float(part.split("%")[0].split()[-1]) / 100
                           for part in after.split(",")[:2]]
        # It learned from 144 labels through the hub layer: the training loss
        # of the last epoch is well below the first's and the training
        # accuracy (training mode, augmented batches) well above it. The
        # test top-1 is printed but not checked: from the 24-step shared
        # pretraining it swings between epochs (10-43% in one run; 13-63%
        # over earlier runs) as the module's batch-norm moving statistics
        # follow batches of 32, so the notebook's accuracy is the
        # benchmarks' business, not this test's.
        losses = [float(m) for m in re.findall(r"- loss: ([0-9.]+)", text)]
        assert len(losses) == TEST_EPOCHS and losses[-1] < 0.85 * losses[0], losses
        accuracy = [float(m) for m in re.findall(r"- accuracy: ([0-9.]+)", text)]
        assert len(accuracy) == TEST_EPOCHS, accuracy
        assert sum(accuracy[-3:]) / 3 > accuracy[0] + 0.15, accuracy
        assert 0.0 <= before <= 1.0 and 0.0 <= trained <= 1.0, after
