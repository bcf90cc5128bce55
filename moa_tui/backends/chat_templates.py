"""Messages -> prompt text with the model's own chat template (or a named llama-cpp-python format).

Formatting the prompt ourselves (instead of create_chat_completion) lets the backend stream with
raw `generate()`. System messages are never lost: templates that reject them, or that silently
drop them (Gemma), get the system text folded into the first user turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .base import Message, ModelError

FALLBACK_FORMAT = "chatml"


@dataclass
class FormattedPrompt:
    text: str
    stops: list[str]
    has_special_tokens: bool  # the text already holds BOS etc.; don't add them when tokenizing
    folded_system: bool


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def named_formats() -> dict[str, Callable]:
    """llama-cpp-python's registered chat formats, by registered name."""
    from llama_cpp import llama_chat_format

    registry = llama_chat_format.LlamaChatCompletionHandlerRegistry()
    registered = list(getattr(registry, "_chat_handlers", {}))
    formatters = {
        _normalize(name[len("format_") :]): fn
        for name, fn in vars(llama_chat_format).items()
        if name.startswith("format_") and callable(fn)
    }
    found: dict[str, Callable] = {}
    for name in registered:
        fn = formatters.get(_normalize(name))
        if fn is not None:
            found[name] = fn
    return found


def fold_system(messages: list[Message]) -> list[Message]:
    """The same conversation with the system text moved to the start of the first user message."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [Message(m.role, m.content) for m in messages if m.role != "system"]
    if not system:
        return rest
    for message in rest:
        if message.role == "user":
            message.content = f"{system}\n\n{message.content}"
            return rest
    return [Message("user", system), *rest]


class PromptFormatter:
    """Renders message lists for one loaded model."""

    def __init__(
        self,
        *,
        template: str | None,
        chat_format: str | None,
        bos_token: str,
        eos_token: str,
        model_id: str,
    ) -> None:
        self.model_id = model_id
        self.notice: str | None = None
        self._named: Callable | None = None
        self._jinja = None
        self.always_fold = False
        if chat_format:
            formats = named_formats()
            if chat_format not in formats:
                known = ", ".join(sorted(formats))
                raise ModelError(f"{model_id}: unknown chat_format {chat_format!r}; known formats: {known}")
            self._named = formats[chat_format]
            self.always_fold = chat_format.startswith("gemma")
            self.description = f"chat_format {chat_format}"
        elif template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            try:
                self._jinja = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)
            except Exception as exc:  # a broken template from the GGUF's metadata
                raise ModelError(f"{model_id}: the chat template in the model file is invalid: {exc}") from exc
            self.description = "the model's own chat template"
        else:
            self._named = named_formats()[FALLBACK_FORMAT]
            self.description = f"fallback chat_format {FALLBACK_FORMAT}"
            self.notice = (
                f"{model_id}: the model file has no chat template; using {FALLBACK_FORMAT}. "
                f"Set chat_format for this model in models.yaml if its answers look wrong."
            )

    def format(self, messages: list[Message]) -> FormattedPrompt:
        folded = self.always_fold
        msgs = fold_system(messages) if folded else messages
        try:
            result = self._render(msgs)
        except ModelError:
            raise
        except Exception as exc:
            if folded or "system" not in str(exc).lower():
                raise self._render_error(exc) from exc
            folded, msgs = True, fold_system(messages)
            try:
                result = self._render(msgs)
            except Exception as exc2:
                raise self._render_error(exc2) from exc2
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        if not folded and system and system.strip() not in result.prompt:
            # The template dropped the system message without saying so: keep it anyway.
            folded = True
            result = self._render(fold_system(messages))
        stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return FormattedPrompt(
            text=result.prompt,
            stops=[s for s in stops if s],
            has_special_tokens=bool(result.added_special),
            folded_system=folded,
        )

    def _render(self, messages: list[Message]):
        payload = [m.to_dict() for m in messages]
        if self._jinja is not None:
            return self._jinja(messages=payload)
        assert self._named is not None
        return self._named(messages=payload)

    def _render_error(self, exc: Exception) -> ModelError:
        from jinja2.exceptions import SecurityError

        if isinstance(exc, SecurityError):
            return ModelError(
                f"{self.model_id}: the model's chat template tried an unsafe operation and was stopped "
                f"({exc}); set chat_format in models.yaml to use a built-in format instead"
            )
        return ModelError(f"{self.model_id}: could not format the prompt with {self.description}: {exc}")
