"""Clears outputs and writes notebooks in nbformat's canonical layout.

    python colab/clean.py colab/*.ipynb

Run it after editing a notebook (in Jupyter, Colab or by hand): the tests
require the stored notebooks to be exactly what this writes.
"""
import sys

import nbformat

KEPT_METADATA = ("kernelspec", "language_info", "colab")


def clean(notebook):
    """Drops outputs, execution counts and per-cell metadata other than tags."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        tags = cell.metadata.get("tags")
        cell.metadata = {"tags": tags} if tags else {}
        cell.source = "\n".join(line.rstrip() for line in cell.source.strip("\n").split("\n"))
    notebook.metadata = {k: v for k, v in notebook.metadata.items() if k in KEPT_METADATA}
    if "colab" in notebook.metadata:
        notebook.metadata["colab"] = {"provenance": []}
    return notebook


def main(paths):
    for path in paths:
        notebook = clean(nbformat.read(path, as_version=4))
        nbformat.validate(notebook)
        with open(path, "w", encoding="utf-8") as f:
            nbformat.write(notebook, f)


if __name__ == "__main__":
    main(sys.argv[1:])
