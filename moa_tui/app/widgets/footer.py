"""Textual's Footer, minus the rebuilds that change nothing.

The Footer rebuilds itself (removes and mounts every key: a layout pass of the whole screen) each
time the app's bindings are refreshed, which happens on every focus change and `refresh_bindings`
call, whether or not the keys it shows changed. A turn's start and end make several such calls,
at the moment a model starts or the next one could. This one rebuilds only when the keys it shows
change; when only whether they are enabled changes (Send and Cancel at a turn's start and end), it
dims or undims those keys in place: a repaint of one key, no layout.
"""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey


class QuietFooter(Footer):
    """A Footer that recomposes only when its keys change, and restyles keys whose state changed."""

    _shown: tuple | None = None  # the keys the last compose showed, without their enabled state

    def _keys(self) -> tuple:
        return tuple(
            (binding.key, binding.action, binding.description, binding.group, tooltip)
            for (_, binding, _enabled, tooltip) in self.screen.active_bindings.values()
            if binding.show
        )

    def compose(self):
        self._shown = self._keys() if self._bindings_ready else None
        yield from super().compose()

    def bindings_changed(self, screen: Screen) -> None:
        if self._shown is not None and screen is self.screen and self.is_attached and self._keys() == self._shown:
            self._restyle_keys()
            return
        super().bindings_changed(screen)

    def _restyle_keys(self) -> None:
        """Dim (or undim) each shown key whose binding got disabled (or enabled)."""
        active = self.screen.active_bindings
        for key in self.query(FooterKey):
            entry = active.get(key.key)
            if entry is None:
                continue
            disabled = not entry[2]
            if disabled != key._disabled:  # the Footer's own flag: a disabled key rings the bell when clicked
                key._disabled = disabled
                key.set_class(disabled, "-disabled")
