"""The Data tab: import a file (all or nothing), see datasets with counts, download exports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from webui.common import (
    ALL_DATASETS,
    EXPORTS,
    Changes,
    TabHandlers,
    dataset_choices,
    dataset_name_of,
    explain,
    refresh_datasets,
)
from webui.render import error_box, ok_box

if TYPE_CHECKING:
    from services import Services

IMPORT_FORMATS = ["auto", "pairs", "chosen-rejected", "llmbar"]
EXPORT_FORMATS = ["jsonl", "csv", "parquet", "trl-preference", "trl-sft"]
EXPORT_SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
DATASET_COLUMNS = ["id", "name", "pairs", "labeled", "judged", "format", "source"]


@dataclass(frozen=True)
class DataView:
    """The Data tab's components its handlers write to."""

    import_msg: gr.HTML
    table: gr.Dataframe
    export_dataset: gr.Dropdown
    export_msg: gr.HTML
    download: gr.File


class DataHandlers(TabHandlers[DataView]):
    def import_upload(self, upload: Any, dataset: str, fmt: str) -> Changes:
        """Import the uploaded file; a bad file is refused whole with the line that failed."""
        if not upload:
            return {self.ui.import_msg: error_box("Choose a file first.")}
        path = Path(upload if isinstance(upload, str) else upload.name)
        try:
            name = (dataset or "").strip() or None
            report = self.services.import_file(path, dataset=name, format=fmt)
        except Exception as exc:  # ImportFailed names the line; anything else is one line too
            failed = f"Import failed, nothing stored: {explain(exc)}"
            return {self.ui.import_msg: error_box(failed)}
        text = (
            f"Imported into {report.dataset!r}: {report.new} new, "
            f"{report.duplicate} already there ({report.format})."
        )
        return {self.ui.import_msg: ok_box(text), self.ui.table: self.table()}

    def table(self) -> pd.DataFrame:
        return dataset_table(self.services)

    def export(self, fmt: str, dataset: Any) -> Changes:
        """Write the export to a fresh temp file and hand it to the browser for download."""
        ui = self.ui
        name = dataset_name_of(self.services, dataset)
        out_dir = EXPORTS.fresh()
        out = out_dir / f"grm-{name or 'all'}-{fmt}{EXPORT_SUFFIX.get(fmt, '.jsonl')}"
        try:
            rows = self.services.export(out, fmt, dataset=name)
        except Exception as exc:
            return {
                ui.export_msg: error_box(f"Export failed: {explain(exc)}"),
                ui.download: None,
            }
        return {
            ui.export_msg: ok_box(f"Exported {rows} labeled rows as {fmt}."),
            ui.download: str(out),
        }

    def refresh(self, current: Any) -> Changes:
        """The tab was opened: fresh counts, and fresh choices for the export's dataset."""
        ui = self.ui
        return {ui.table: self.table(), ui.export_dataset: refresh_datasets(self.services, current)}


def dataset_table(services: Services) -> pd.DataFrame:
    """Every dataset with its counts, one row each."""
    rows = [
        [d.id, d.name, d.pair_count, d.labeled, d.judged, d.format, Path(d.source).name]
        for d in services.datasets()
    ]
    return pd.DataFrame(rows, columns=DATASET_COLUMNS)


def build_data_tab(services: Services, max_upload_mb: int) -> gr.Tab:
    with gr.Tab("Data", id="data", elem_id="grm-tab-data") as tab:
        ui, controls = _layout(services, max_upload_mb)
    h = DataHandlers(services, ui)
    import_inputs = [controls["upload"], controls["name"], controls["fmt"]]
    controls["import"].click(
        h.import_upload, import_inputs, [ui.import_msg, ui.table], api_name="import_file"
    )
    export_inputs = [controls["export_fmt"], ui.export_dataset]
    export_outputs = [ui.export_msg, ui.download]
    controls["export"].click(h.export, export_inputs, export_outputs, api_name="export")
    refreshed = [ui.table, ui.export_dataset]
    tab.select(h.refresh, [ui.export_dataset], refreshed, api_visibility="private")
    return tab


def _layout(services: Services, max_upload_mb: int) -> tuple[DataView, dict[str, Any]]:
    """Import | export side by side over the datasets table; returns the components handlers
    write and the controls."""
    controls: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown(
                f"#### Import\nJSONL, CSV or Parquet, up to {max_upload_mb} MB. A file with "
                "one bad row is refused whole; the message names the row."
            )
            controls["upload"] = gr.File(
                label="File",
                file_types=[".jsonl", ".json", ".csv", ".parquet"],
                elem_id="grm-upload",
                height=120,
            )
            with gr.Row():
                controls["name"] = gr.Textbox(label="Dataset name (default: file name)", scale=2)
                controls["fmt"] = gr.Dropdown(IMPORT_FORMATS, value="auto", label="Format", scale=1)
            controls["import"] = gr.Button("Import", variant="primary", elem_id="grm-import")
            import_msg = gr.HTML(elem_id="grm-import-msg", js_on_load=None)
        with gr.Column(scale=1):
            gr.Markdown("#### Export labels")
            with gr.Row():
                controls["export_fmt"] = gr.Dropdown(EXPORT_FORMATS, value="jsonl", label="Format")
                export_dataset = gr.Dropdown(
                    dataset_choices(services), value=ALL_DATASETS, label="Dataset"
                )
            controls["export"] = gr.Button("Export", elem_id="grm-export")
            export_msg = gr.HTML(js_on_load=None)
            download = gr.File(
                label="Download", interactive=False, elem_id="grm-download", height=90
            )
    gr.Markdown("#### Datasets")
    table = gr.Dataframe(
        _table_loader(services), interactive=False, elem_id="grm-datasets", wrap=True
    )
    view = DataView(
        import_msg=import_msg,
        table=table,
        export_dataset=export_dataset,
        export_msg=export_msg,
        download=download,
    )
    return view, controls


def _table_loader(services: Services) -> Callable[[], pd.DataFrame]:
    """The table's value on every page load, as a function named `table` (the API's /table)."""

    def table() -> pd.DataFrame:
        return dataset_table(services)

    return table
