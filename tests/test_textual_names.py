"""No private name of ours hides one of Textual's.

Textual keeps its own state in underscore attributes and methods on every widget, screen and app
(`_closed`, `_render`, `_selection`...). A subclass that defines the same name silently replaces it:
`MarkdownView._render(source, tokens)` hid `Widget._render()` and Ctrl+C on a selection crashed the
app; `MoAApp._closed` stopped the app's message loop. This walks every Textual subclass in
moa_tui.app and compares the private names it defines (class attributes, methods, and every
`self._name = ...` in its source) with the names Textual's classes in its MRO define the same way.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import textwrap

from textual.app import App
from textual.message_pump import MessagePump
from textual.scroll_view import ScrollView

import moa_tui.app

# Message handlers are not replaced by a subclass: Textual calls the `_on_<event>` of every class in
# the MRO in turn (a subclass stops the base's with `event.prevent_default()`).
HANDLER_PREFIX = "_on_"


@functools.cache
def _source_names(cls: type) -> frozenset[str]:
    """Names a class's own source defines: its body's functions and assignments, and `self.X = ...`."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return frozenset()
    names: set[str] = set()
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id == "self"):
            names.add(node.attr)
    return frozenset(names)


def _textual_names(cls: type) -> dict[str, str]:
    """Every name Textual's classes in `cls`'s MRO define (in their namespace or as `self.X`)."""
    names: dict[str, str] = {}
    for base in cls.__mro__:
        if base.__module__.split(".")[0] == "textual":
            for name in {*vars(base), *_source_names(base), *getattr(base, "__slots__", ())}:
                names.setdefault(name, f"{base.__module__}.{base.__qualname__}")
    return names


def _our_textual_classes() -> list[type]:
    modules = [moa_tui.app] + [importlib.import_module(info.name) for info in
                               pkgutil.walk_packages(moa_tui.app.__path__, "moa_tui.app.")]
    found = {obj for module in modules for obj in vars(module).values()
             if inspect.isclass(obj) and issubclass(obj, MessagePump) and obj.__module__.startswith("moa_tui.")}
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_walk_finds_our_widgets_screens_the_app_and_its_mixins():
    names = {cls.__name__ for cls in _our_textual_classes()}
    assert {"MoAApp", "MarkdownView", "ModelPane", "ChatInput", "TurnScreen", "QuietFooter"} <= names
    app = next(cls for cls in _our_textual_classes() if cls.__name__ == "MoAApp")
    assert {"_open_chosen", "_last_turn_refused", "action_copy_code"} <= _our_names(app)  # from the mixins


class _BrokenView(ScrollView):
    def _render(self, source, tokens):  # MarkdownView's: Ctrl+C on a selection called it with no arguments
        return source


class _BrokenApp(App):
    def start(self) -> None:
        self._closed = True  # MoAApp's: it stopped the app's message loop


def test_the_check_catches_the_collisions_that_broke_the_app():
    for broken, name in ((_BrokenView, "_render"), (_BrokenApp, "_closed")):
        assert {n for n in _source_names(broken) if n in _textual_names(broken)} == {name}


def _our_names(cls: type) -> set[str]:
    """Names `cls` and our own classes in its MRO define (the app's mixins are part of it)."""
    return {name for base in cls.__mro__ if base.__module__.startswith("moa_tui.") for name in _source_names(base)}


def test_no_private_name_of_ours_hides_one_of_textuals():
    clashes = []
    for cls in _our_textual_classes():
        theirs = _textual_names(cls)
        for name in sorted(_our_names(cls)):
            if _is_private(name) and name in theirs and not name.startswith(HANDLER_PREFIX):
                clashes.append(f"{cls.__module__}.{cls.__qualname__}.{name} hides {theirs[name]}.{name}")
    assert not clashes, "rename these (Textual uses the name for its own state):\n" + "\n".join(clashes)
