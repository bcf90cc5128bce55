"""The Textual chat app. Imported only by `moa chat` (textual is not needed by the headless commands)."""

from .app import MoAApp, run_app

__all__ = ["MoAApp", "run_app"]
