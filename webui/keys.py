"""One-keystroke labeling: the key map shown on screen and the page script that applies it."""

from __future__ import annotations

import json

# key (KeyboardEvent.key, lower-cased) -> elem_id of the Label tab button it presses
SHORTCUTS: dict[str, str] = {
    "enter": "grm-agree",
    "y": "grm-agree",
    "1": "grm-label-a",
    "2": "grm-label-b",
    "3": "grm-label-tie",
    "4": "grm-label-bad",
    "s": "grm-skip",
    "u": "grm-undo",
    "j": "grm-judge",
}

# Keys typed into a text field are text, not commands; modifier combos belong to the browser.
_SCRIPT = """
<script>
(() => {
  const keys = %s;
  const notText = ["checkbox", "radio", "range", "button", "submit", "reset", "color", "file"];
  const typing = (el) => el && (el.isContentEditable ||
    ["TEXTAREA", "SELECT"].includes(el.tagName) ||
    (el.tagName === "INPUT" && !notText.includes((el.type || "text").toLowerCase())));
  window.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (typing(event.target) || typing(document.activeElement)) return;
    const id = keys[event.key.toLowerCase()];
    if (!id) return;
    const button = document.getElementById(id);
    // Only while the Label tab is on screen and the button can be pressed.
    if (!button || button.offsetParent === null || button.disabled) return;
    event.preventDefault();
    event.stopPropagation();
    button.click();
  }, true);
  // Saving or undoing while the judge still streams: cancel that stream first.
  const leaving = new Set(%s);
  window.addEventListener("click", (event) => {
    const button = event.target.closest ? event.target.closest("button") : null;
    if (!button || !leaving.has(button.id)) return;
    if (document.querySelector('#grm-badge .grm-badge[data-state="running"]'))
      document.getElementById("grm-cancel-judge")?.click();
  }, true);
})();
</script>
"""


# Buttons that move to another pair (a judgment still streaming for this one is cancelled).
LEAVING_BUTTONS = sorted(set(SHORTCUTS.values()) - {"grm-judge"})


def shortcut_script() -> str:
    """The <head> script: keys become button clicks; leaving a pair cancels its judgment."""
    return _SCRIPT % (json.dumps(SHORTCUTS), json.dumps(LEAVING_BUTTONS))
