"""Textual's Footer, minus the rebuilds that change nothing, and with the keys that fit the width.

The Footer rebuilds itself (removes and mounts every key: a layout pass of the whole screen) each
time the app's bindings are refreshed, which happens on every focus change and `refresh_bindings`
call, whether or not the keys it shows changed. A turn's start and end make several such calls,
at the moment a model starts or the next one could. This one rebuilds only when the keys it shows
change; when only whether they are enabled changes (Send and Cancel at a turn's start and end), it
dims or undims those keys in place: a repaint of one key, no layout.

A narrow terminal has no room for every key: the keys that do not fit are hidden, least needed
first (`keys.footer_rank`: Help, Cancel and Quit stay longest; every key stays in the command
palette and F1), instead of the row being cut at its end.
"""

from __future__ import annotations

from rich.cells import cell_len
from textual import events
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

from ..keys import footer_rank, key_order


class QuietFooter(Footer):
    """A Footer that recomposes only when its keys change, restyles keys whose state changed, and fits."""

    _shown: tuple | None = None  # the keys the last compose showed, without their enabled state

    def _keys(self) -> tuple:
        return tuple(
            (binding.key, binding.action, binding.description, binding.group, tooltip)
            for (_, binding, _enabled, tooltip) in self.screen.active_bindings.values()
            if binding.show
        )

    def compose(self):
        self._shown = self._keys() if self._bindings_ready else None
        keys = list(super().compose())
        # Textual orders keys as the bindings were merged (TextArea's own keys first, among them the
        # ones the message box or the app rebinds): Send first, then the app's keys as keys.py lists them.
        keys.sort(key=lambda key: key_order(key.action) if isinstance(key, FooterKey) else len(keys))
        yield from keys
        self.call_after_refresh(self.fit_keys)

    def bindings_changed(self, screen: Screen) -> None:
        if self._shown is not None and screen is self.screen and self.is_attached and self._keys() == self._shown:
            self._restyle_keys()
            return
        super().bindings_changed(screen)

    def on_resize(self, event: events.Resize) -> None:
        self.fit_keys()

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

    # -- fitting the width ----------------------------------------------------------------------

    @staticmethod
    def key_width(key: FooterKey) -> int:
        """Cells `key` takes in the row, shown or not (its label, padding and margin)."""
        return cell_len(key.render().plain) + key.styles.gutter.width + key.styles.margin.width

    def fit_keys(self) -> None:
        """Show the keys that fit the footer's width; hide the rest, least needed first."""
        if not self.is_attached or not self.size.width:
            return
        keys = [key for key in self.query(FooterKey) if not key.has_class("-command-palette")]
        palette = [key for key in self.query(FooterKey) if key.has_class("-command-palette")]
        room = self.size.width - sum(self.key_width(key) for key in palette)
        widths = {key: self.key_width(key) for key in keys}
        used = sum(widths.values())
        hidden = set()
        for key in sorted(keys, key=lambda k: footer_rank(k.action), reverse=True):
            if used <= room:
                break
            hidden.add(key)
            used -= widths[key]
        for key in keys:
            if key.display == (key in hidden):
                key.display = key not in hidden
