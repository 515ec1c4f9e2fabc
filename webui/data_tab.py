"""The Data tab: import a file (all or nothing), see datasets with counts, download exports."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from webui.common import ALL_DATASETS, dataset_choices, dataset_name_of, explain
from webui.render import safe_text

IMPORT_FORMATS = ["auto", "pairs", "chosen-rejected", "llmbar"]
EXPORT_FORMATS = ["jsonl", "csv", "parquet", "trl-preference", "trl-sft"]
EXPORT_SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
KEEP_EXPORTS = 8  # recent export files kept while their downloads may still be copied
DATASET_COLUMNS = ["id", "name", "pairs", "labeled", "judged", "format", "source"]


class DataHandlers:
    def __init__(self, services: Any) -> None:
        self.services = services
        self._exports: tempfile.TemporaryDirectory | None = None

    def import_upload(self, upload: Any, dataset: str, fmt: str) -> tuple:
        """Import the uploaded file; a bad file is refused whole with the line that failed."""
        if not upload:
            return _message("error", "Choose a file first."), gr.skip()
        path = Path(upload if isinstance(upload, str) else upload.name)
        try:
            name = (dataset or "").strip() or None
            report = self.services.import_file(path, dataset=name, format=fmt)
        except Exception as exc:  # ImportFailed names the line; anything else is one line too
            return _message("error", f"Import failed, nothing stored: {explain(exc)}"), gr.skip()
        text = (
            f"Imported into {report.dataset!r}: {report.new} new, "
            f"{report.duplicate} already there ({report.format})."
        )
        return _message("ok", text), self.table()

    def table(self) -> pd.DataFrame:
        rows = [
            [d.id, d.name, d.pair_count, d.labeled, d.judged, d.format, Path(d.source).name]
            for d in self.services.datasets()
        ]
        return pd.DataFrame(rows, columns=DATASET_COLUMNS)

    def export(self, fmt: str, dataset: Any) -> tuple:
        """Write the export to a fresh temp file and hand it to the browser for download."""
        name = dataset_name_of(self.services, dataset)
        out_dir = self._export_dir()
        out = out_dir / f"grm-{name or 'all'}-{fmt}{EXPORT_SUFFIX.get(fmt, '.jsonl')}"
        try:
            rows = self.services.export(out, fmt, dataset=name)
        except Exception as exc:
            return _message("error", f"Export failed: {explain(exc)}"), None
        return _message("ok", f"Exported {rows} labeled rows as {fmt}."), str(out)

    def _export_dir(self) -> Path:
        """A fresh folder for one export, inside this app's own temp folder: Gradio copies the
        file for the download after the handler returns, so the previous exports are removed
        here instead, and the whole folder when the app's process ends."""
        if self._exports is None:
            self._exports = tempfile.TemporaryDirectory(prefix="grm-exports-")
        root = Path(self._exports.name)
        for old in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime)[:-KEEP_EXPORTS]:
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=root))

    def refresh(self, current: Any) -> tuple:
        choices = dataset_choices(self.services)
        keep = current if current in {v for _, v in choices} else ALL_DATASETS
        return self.table(), gr.update(choices=choices, value=keep)


def _message(kind: str, text: str) -> str:
    return f'<div class="grm-msg grm-msg-{kind}">{safe_text(text)}</div>'


def build_data_tab(services: Any, max_upload_mb: int) -> gr.Tab:
    h = DataHandlers(services)
    with gr.Tab("Data", id="data", elem_id="grm-tab-data") as tab:
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown(
                    f"#### Import\nJSONL, CSV or Parquet, up to {max_upload_mb} MB. A file with "
                    "one bad row is refused whole; the message names the row."
                )
                upload = gr.File(
                    label="File",
                    file_types=[".jsonl", ".json", ".csv", ".parquet"],
                    elem_id="grm-upload",
                    height=120,
                )
                with gr.Row():
                    name = gr.Textbox(label="Dataset name (default: file name)", scale=2)
                    fmt = gr.Dropdown(IMPORT_FORMATS, value="auto", label="Format", scale=1)
                import_btn = gr.Button("Import", variant="primary", elem_id="grm-import")
                import_msg = gr.HTML(elem_id="grm-import-msg", js_on_load=None)
            with gr.Column(scale=1):
                gr.Markdown("#### Export labels")
                with gr.Row():
                    export_fmt = gr.Dropdown(EXPORT_FORMATS, value="jsonl", label="Format")
                    export_ds = gr.Dropdown(
                        dataset_choices(services), value=ALL_DATASETS, label="Dataset"
                    )
                export_btn = gr.Button("Export", elem_id="grm-export")
                export_msg = gr.HTML(js_on_load=None)
                download = gr.File(
                    label="Download", interactive=False, elem_id="grm-download", height=90
                )
        gr.Markdown("#### Datasets")
        table = gr.Dataframe(h.table, interactive=False, elem_id="grm-datasets", wrap=True)
    import_btn.click(
        h.import_upload, [upload, name, fmt], [import_msg, table], api_name="import_file"
    )
    export_btn.click(h.export, [export_fmt, export_ds], [export_msg, download], api_name="export")
    tab.select(h.refresh, [export_ds], [table, export_ds], api_visibility="private")
    return tab
