"""The Guidelines & prompts tab: a dataset's guidelines (shown to annotators, given to the judge
as its first principles) and judge prompts as versions: pick one to judge with, or save an edited
copy as a new version (a template that cannot judge is refused with its reasons)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from webui.common import (
    EXPORTS,
    Changes,
    TabHandlers,
    dataset_choices,
    dataset_id_of,
    dataset_name_of,
    explain,
    refresh_datasets,
)
from webui.render import error_box, ok_box

if TYPE_CHECKING:
    from services import Services

PRIVATE = {"api_visibility": "private"}


@dataclass(frozen=True)
class PromptsView:
    dataset: gr.Dropdown
    guidelines: gr.Textbox
    guidelines_msg: gr.HTML
    version: gr.Dropdown
    system: gr.Textbox
    user: gr.Textbox
    answer_prefix: gr.Textbox
    new_name: gr.Textbox
    note: gr.Textbox
    version_msg: gr.HTML
    download: gr.File


class PromptsHandlers(TabHandlers[PromptsView]):
    def show_guidelines(self, dataset: Any) -> Changes:
        dataset_id = dataset_id_of(dataset)
        if not dataset_id:
            return {self.ui.guidelines: "", self.ui.guidelines_msg: ""}
        text = self.services.dataset_guidelines(dataset_id)
        name = dataset_name_of(self.services, dataset)
        said = f"The guidelines of {name}." if text.strip() else f"{name} has no guidelines yet."
        return {self.ui.guidelines: text, self.ui.guidelines_msg: ok_box(said)}

    def save_guidelines(self, dataset: Any, text: str) -> Changes:
        dataset_id = dataset_id_of(dataset)
        if not dataset_id:
            return {self.ui.guidelines_msg: error_box("Choose a dataset first.")}
        try:
            self.services.set_dataset_guidelines(dataset_id, text)
        except Exception as exc:  # refused: the reason, and the text stays in the box
            return {self.ui.guidelines_msg: error_box(f"Not saved: {explain(exc)}")}
        said = "Saved." if (text or "").strip() else "Cleared."
        return {self.ui.guidelines_msg: ok_box(said)}

    def show_version(self, version: str) -> Changes:
        ui = self.ui
        try:
            row = self.services.prompt_version(version)
        except Exception as exc:
            return {ui.version_msg: error_box(explain(exc))}
        return {
            ui.system: row["system"],
            ui.user: row["user"],
            ui.answer_prefix: row["answer_prefix"] or "",
            ui.version_msg: "",
        }

    def save_version(
        self, parent: str, name: str, system: str, user: str, prefix: str, note: str
    ) -> Changes:
        ui = self.ui
        try:
            row = self.services.new_prompt_version(
                (name or "").strip(),
                parent,
                system=system,
                user=user,
                answer_prefix=prefix,
                note=(note or "").strip() or None,
            )
        except Exception as exc:  # refused with every reason; nothing was stored
            return {ui.version_msg: error_box(f"Not saved: {explain(exc)}")}
        choices = version_choices(self.services)
        return {
            ui.version: gr.update(choices=choices, value=row["version"]),
            ui.version_msg: ok_box(f"Saved {row['version']} (a copy of {parent})."),
        }

    def export_version(self, version: str) -> Changes:
        """The version as the small JSON file `grm prompts export` writes, to download."""
        ui = self.ui
        if not version:
            return {ui.version_msg: error_box("Choose a version first."), ui.download: None}
        try:
            out = EXPORTS.fresh() / f"{version}.json"
            self.services.export_prompt_version(version, out)
        except Exception as exc:
            return {ui.version_msg: error_box(f"Not exported: {explain(exc)}"), ui.download: None}
        return {ui.version_msg: ok_box(f"Exported {version}."), ui.download: str(out)}

    def import_version(self, upload: Any) -> Changes:
        """Store a version from an exported JSON file; a bad file is refused with the reason and
        nothing is stored."""
        ui = self.ui
        path = Path(upload if isinstance(upload, str) else upload.name)
        try:
            row = self.services.import_prompt_version(path)
        except Exception as exc:
            return {ui.version_msg: error_box(f"Not imported: {explain(exc)}")}
        return self.show_version(row["version"]) | {
            ui.version: gr.update(choices=version_choices(self.services), value=row["version"]),
            ui.version_msg: ok_box(f"Imported {row['version']}."),
        }

    def use_version(self, version: str) -> Changes:
        """Judge with this version from now on (the Judge tab's other settings stay)."""
        judge = self.services.judge
        try:
            row = self.services.prompt_version(version)
            options = judge.options.model_copy(
                update={"prompt_version": version, "protocol": row["protocol"]}
            )
            self.services.configure_judge(judge.backend, judge.model, options)
        except Exception as exc:
            return {self.ui.version_msg: error_box(f"Not changed: {explain(exc)}")}
        return {self.ui.version_msg: ok_box(f"The judge now uses {version}.")}

    def opened(self, dataset: Any) -> Changes:
        # Choices only for the versions: a value here would undo a pick made while this ran.
        return {
            self.ui.dataset: refresh_datasets(self.services, dataset),
            self.ui.version: gr.update(choices=version_choices(self.services)),
        }


def version_choices(services: Services) -> list[tuple[str, str]]:
    rows = services.prompt_versions()
    return [(_label(r), r["version"]) for r in rows]


def _label(row: dict[str, Any]) -> str:
    kind = "built in" if row.get("read_only") else f"from {row.get('parent_version') or '?'}"
    return f"{row['version']} ({kind})"


def build_prompts_tab(services: Services) -> gr.Tab:
    with gr.Tab("Guidelines & prompts", id="prompts", elem_id="grm-tab-prompts") as tab:
        ui, controls = _layout(services)
    h = PromptsHandlers(services, ui)
    ui.dataset.input(h.show_guidelines, [ui.dataset], [ui.guidelines, ui.guidelines_msg], **PRIVATE)
    controls["save_guidelines"].click(
        h.save_guidelines, [ui.dataset, ui.guidelines], [ui.guidelines_msg], api_name="guidelines"
    )
    shown = [ui.system, ui.user, ui.answer_prefix, ui.version_msg]
    ui.version.input(h.show_version, [ui.version], shown, **PRIVATE)
    edits = [ui.version, ui.new_name, ui.system, ui.user, ui.answer_prefix, ui.note]
    controls["save_version"].click(
        h.save_version, edits, [ui.version, ui.version_msg], api_name="new_prompt_version"
    )
    controls["use_version"].click(h.use_version, [ui.version], [ui.version_msg], **PRIVATE)
    controls["export"].click(
        h.export_version, [ui.version], [ui.version_msg, ui.download], api_name="export_prompt"
    )
    controls["import"].upload(
        h.import_version, [controls["import"]], [*shown, ui.version], api_name="import_prompt"
    )
    tab.select(h.opened, [ui.dataset], [ui.dataset, ui.version], **PRIVATE)
    return tab


def _layout(services: Services) -> tuple[PromptsView, dict[str, Any]]:
    controls: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown(
                "#### Guidelines\nMarkdown, per dataset: annotators see them beside the pair, "
                "and the judge is given them as its first principles."
            )
            dataset = gr.Dropdown(dataset_choices(services), label="Dataset", elem_id="grm-g-ds")
            guidelines = gr.Textbox(label="Guidelines", lines=10, elem_id="grm-guidelines-text")
            controls["save_guidelines"] = gr.Button("Save guidelines", elem_id="grm-g-save")
            guidelines_msg = gr.HTML(js_on_load=None, elem_id="grm-g-msg")
        with gr.Column(scale=2):
            gr.Markdown(
                "#### Judge prompts\nVersions are never edited in place: edit the texts and save "
                "them as a new version. Placeholders: {prompt}, {response_a}, {response_b} "
                "(the verifier: {response}), {reference_block}, and optionally "
                "{guidelines_block}; write a literal brace as {{ or }}."
            )
            version = gr.Dropdown(label="Version", elem_id="grm-p-version")
            system = gr.Textbox(label="System message", lines=2, elem_id="grm-p-system")
            user = gr.Textbox(label="User message", lines=12, elem_id="grm-p-user")
            answer_prefix = gr.Textbox(label="Answer starts with", elem_id="grm-p-prefix")
            with gr.Row():
                new_name = gr.Textbox(label="New version name", elem_id="grm-p-name")
                note = gr.Textbox(label="Note", elem_id="grm-p-note")
            with gr.Row():
                controls["save_version"] = gr.Button("Save as new version", elem_id="grm-p-save")
                controls["use_version"] = gr.Button("Judge with this version", elem_id="grm-p-use")
            version_msg = gr.HTML(js_on_load=None, elem_id="grm-p-msg")
            with gr.Row():
                controls["export"] = gr.Button("Export as JSON", elem_id="grm-p-export")
                controls["import"] = gr.UploadButton(
                    "Import a version (JSON)", file_types=[".json"], elem_id="grm-p-import"
                )
            download = gr.File(label="Download", interactive=False, elem_id="grm-p-file", height=90)
    view = PromptsView(
        dataset,
        guidelines,
        guidelines_msg,
        version,
        system,
        user,
        answer_prefix,
        new_name,
        note,
        version_msg,
        download,
    )
    return view, controls
