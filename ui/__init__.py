"""The Gradio page: layout and event wiring only; all work goes through the Worker."""

from .layout import build_app

__all__ = ["build_app"]
