"""The Gradio web app's parts: one module per tab, plus safe rendering and shared helpers."""
