"""A run's output notebook: rendered to HTML (served sandboxed by the API), and its error in one line."""

from __future__ import annotations

import nbformat


def render_html(output: bytes) -> str:
    from nbconvert import HTMLExporter

    notebook = nbformat.reads(output.decode(), as_version=4)
    html, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    return html


def error_summary(output: bytes) -> str:
    """The failing cell's error, as papermill marked it: "ValueError: bad column 'x' (cell 4)"; "" if none."""
    try:
        notebook = nbformat.reads(output.decode(), as_version=4)
    except Exception:  # noqa: BLE001 - a damaged output notebook has no summary to give
        return ""
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                text = f"{out.get('ename', 'Error')}: {out.get('evalue', '')}".strip().rstrip(":")
                return f"{text[:300]} (code cell {number})"
    return ""
