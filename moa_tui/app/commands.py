"""The command palette (Ctrl+P): the app's commands, and one entry per pipeline to switch to."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from .keys import COMMANDS, key_label


class MoACommands(Provider):
    """Every app key as a searchable command, plus `Switch to pipeline NAME`."""

    def _commands(self) -> list[tuple[str, str, object]]:
        app = self.app
        entries: list[tuple[str, str, object]] = [
            (command.title, f"{key_label(command.key)}: {command.help}", partial(app.run_action, command.action))
            for command in COMMANDS
        ]
        config = getattr(app, "config", None)
        current = getattr(app, "pipeline_name", None)
        if config is not None:
            for name, pipeline in config.pipelines.items():
                if name != current:
                    entries.append((f"Switch to pipeline {name}", pipeline.description or "",
                                    partial(app.run_action, f"use_pipeline({name!r})")))
        return entries

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
