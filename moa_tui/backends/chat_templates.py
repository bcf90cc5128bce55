"""Messages -> prompt text with the model's own chat template (or a named llama-cpp-python format).

Formatting the prompt ourselves (instead of create_chat_completion) lets the backend stream with
raw `generate()`. System messages are never lost: templates that reject them, or that silently
drop them (Gemma), get the system text folded into the first user turn. There is only ever one
system message, and it comes first: some templates (Qwen3.5) raise on a later one.

Every Jinja template gets `enable_thinking` (the model's `thinking` setting): thinking templates
(Qwen3.5, Gemma 4, Granite 4.2) read it, others ignore it. Qwen3.5's thinks when it is absent.

A chat template comes from the model file, so it is untrusted code. It runs in Jinja's
ImmutableSandboxedEnvironment (no attribute tricks, no `open`, no mutation), as in llama-cpp-python,
and on top of that within a time limit and with huge repetitions refused: otherwise a template such
as two nested `range(100000)` loops would hang its model thread, and Ctrl+C, which waits for that
thread, with it.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..thinking import open_thinking
from .base import Message, ModelError

FALLBACK_FORMAT = "chatml"
TEMPLATE_TIME_LIMIT = 2.0  # seconds one rendering may take; real templates need about a millisecond
TEMPLATE_SIZE_LIMIT = 10_000_000  # the longest text or list (and largest number) a template may build or pass
TEMPLATE_OUTPUT_SLACK = 100_000  # characters a prompt may have beyond twice the messages' own text


@dataclass
class FormattedPrompt:
    text: str
    stops: list[str]
    has_special_tokens: bool  # the text already holds BOS etc.; don't add them when tokenizing
    folded_system: bool
    open_thinking: str = ""  # the opening thinking tag the prompt ends in (thinking.open_thinking)


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


def system_first(messages: list[Message]) -> list[Message]:
    """The same conversation with every system text in one system message at the start.

    moa's own message lists already look like that (prompts.py); this keeps any other caller from
    handing a template a later system message, which Qwen3.5's rejects ("System message must be at
    the beginning.").
    """
    if all(m.role != "system" for m in messages[1:]):
        return messages
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    return [Message("system", system), *(m for m in messages if m.role != "system")]


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
        thinking: bool = False,
    ) -> None:
        self.model_id = model_id
        self.thinking = thinking
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
            try:
                self._jinja = _GuardedJinjaFormatter(template=template, eos_token=eos_token, bos_token=bos_token)
            except Exception as exc:  # a broken or hostile template from the GGUF's metadata
                raise ModelError(
                    f"{model_id}: the chat template in the model file is invalid: {_reason(exc)}"
                ) from exc
            self.description = "the model's own chat template"
        else:
            self._named = named_formats()[FALLBACK_FORMAT]
            self.description = f"fallback chat_format {FALLBACK_FORMAT}"
            self.notice = (
                f"{model_id}: the model file has no chat template; using {FALLBACK_FORMAT}. "
                f"Set chat_format for this model in models.yaml if its answers look wrong."
            )

    def format(self, messages: list[Message]) -> FormattedPrompt:
        messages = system_first(messages)
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
            try:
                result = self._render(fold_system(messages))
            except Exception as exc:
                raise self._render_error(exc) from exc
        if not result.prompt.strip():  # llama.cpp cannot start from nothing (an assertion deep inside)
            raise ModelError(f"{self.model_id}: {self.description} produced an empty prompt; set chat_format "
                             f"in models.yaml to use a built-in format instead")
        stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return FormattedPrompt(
            text=result.prompt,
            stops=[s for s in stops if s],
            has_special_tokens=bool(result.added_special),
            folded_system=folded,
            open_thinking=open_thinking(result.prompt),
        )

    def _render(self, messages: list[Message]):
        payload = [m.to_dict() for m in messages]
        if self._jinja is not None:
            return self._jinja(messages=payload, enable_thinking=self.thinking)
        assert self._named is not None
        return self._named(messages=payload)

    def _render_error(self, exc: Exception) -> ModelError:
        from jinja2.exceptions import SecurityError

        if isinstance(exc, SecurityError):
            return ModelError(
                f"{self.model_id}: the model's chat template tried an unsafe operation and was stopped "
                f"({_reason(exc)}); set chat_format in models.yaml to use a built-in format instead"
            )
        return ModelError(f"{self.model_id}: could not format the prompt with {self.description}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """An exception as a few words on one line (MemoryError and friends have no message)."""
    text = " ".join(str(exc).split()).rstrip(".")
    return text or type(exc).__name__


class _GuardedJinjaFormatter:
    """llama-cpp-python's Jinja2ChatFormatter (same sandbox, options and variables), plus limits.

    Rendering runs under a line tracer, confined to the template's own code, that stops it after
    TEMPLATE_TIME_LIMIT seconds; `*`, `**`, calls, filters and lookups refuse values beyond
    TEMPLATE_SIZE_LIMIT, and a prompt far longer than the messages is refused.
    """

    def __init__(self, *, template: str, eos_token: str, bos_token: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.eos_token = eos_token
        self.bos_token = bos_token
        generation_tags = getattr(Jinja2ChatFormatter, "IgnoreGenerationTags", None)  # {% generation %}
        environment = _bounded_sandbox()(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[*([generation_tags] if generation_tags else []), "jinja2.ext.loopcontrols"],
        )
        environment.set_filter("tojson", Jinja2ChatFormatter.tojson)  # Transformers' JSON rendering
        self._strftime_now = Jinja2ChatFormatter.strftime_now
        self._template = _with_time_limit(lambda: environment.from_string(template))

    def __call__(self, *, messages: list[dict], enable_thinking: bool = False) -> Any:
        from llama_cpp.llama_chat_format import ChatFormatterResponse

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        prompt = _with_time_limit(lambda: self._template.render(
            messages=messages, eos_token=self.eos_token, bos_token=self.bos_token,
            raise_exception=raise_exception, add_generation_prompt=True, functions=None, function_call=None,
            tools=None, tool_choice=None, strftime_now=self._strftime_now, enable_thinking=enable_thinking,
        ))
        given = sum(len(str(m.get("content") or "")) for m in messages)
        if len(prompt) > 2 * given + TEMPLATE_OUTPUT_SLACK:  # llama.cpp would spend minutes tokenizing it
            from jinja2.exceptions import SecurityError

            raise SecurityError(f"it wrote {len(prompt):,} characters for {given:,} characters of messages")
        return ChatFormatterResponse(prompt=prompt, stop=[self.eos_token], added_special=True)


def _with_time_limit(work: Callable[[], Any]) -> Any:
    """Run `work`, raising SecurityError inside Jinja code that is still running after the time limit."""
    from jinja2.exceptions import SecurityError

    deadline = time.monotonic() + TEMPLATE_TIME_LIMIT

    def in_template(frame, event, arg):  # every line (and loop turn) of the template's compiled code
        if time.monotonic() > deadline:
            raise SecurityError(f"rendering ran for more than {TEMPLATE_TIME_LIMIT:g} s")
        return in_template

    def on_call(frame, event, arg):
        return in_template if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        return work()
    finally:
        sys.settrace(previous)


def _weight(value: Any, limit: int = TEMPLATE_SIZE_LIMIT) -> int:
    """A value's size, counted until it passes `limit`: a number by its magnitude, text by its length, a
    list or mapping by its items and their own weight (so `[x, x]` doublings count in full)."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            total += max(1, abs(item))
        elif isinstance(item, (str, bytes)):
            total += max(1, len(item))
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 1
            stack.extend(item)
        elif isinstance(item, dict):
            total += 1
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            total += 1
    return total


def _too_big(value: Any) -> bool:
    return _weight(value) > TEMPLATE_SIZE_LIMIT


_SANDBOX: type | None = None


def _bounded_sandbox() -> type:
    """ImmutableSandboxedEnvironment that refuses to build or pass on huge values."""
    global _SANDBOX
    if _SANDBOX is not None:
        return _SANDBOX
    import functools

    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def refuse_big(value: Any, what: str) -> Any:
        if _too_big(value):
            raise SecurityError(f"{what} bigger than {TEMPLATE_SIZE_LIMIT:,} was refused")
        return value

    def guarded(name: str, function: Callable) -> Callable:
        @functools.wraps(function)  # keeps Jinja's pass_context / pass_eval_context marks
        def filter_(*args: Any, **kwargs: Any) -> Any:
            for value in (*args, *kwargs.values()):
                refuse_big(value, f"the '{name}' filter with a value")
            return refuse_big(function(*args, **kwargs), f"the '{name}' filter's result")

        return filter_

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.filters = {name: guarded(name, f) for name, f in self.filters.items()}

        def set_filter(self, name: str, function: Callable) -> None:
            self.filters[name] = guarded(name, function)

        def call_binop(self, context, operator, left, right):
            sequences = (str, list, tuple)
            if operator == "*" and (isinstance(left, sequences) or isinstance(right, sequences)):
                count, items = (right, left) if isinstance(left, sequences) else (left, right)
                if isinstance(count, int) and not isinstance(count, bool) and count * _weight(items) > \
                        TEMPLATE_SIZE_LIMIT:
                    raise SecurityError(f"repeating a value {count:,} times was refused")
            if operator == "**" and isinstance(right, (int, float)) and not isinstance(right, bool) and (
                    right > 64 or _too_big(left)):
                raise SecurityError("a power that big was refused")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's own argument names)
            for value in (*args, *kwargs.values()):
                refuse_big(value, "a call with a value")
            return refuse_big(super().call(__context, __obj, *args, **kwargs), "a call's result")

        def getattr(self, obj, attribute):
            return refuse_big(super().getattr(obj, attribute), "a value")

        def getitem(self, obj, argument):
            return refuse_big(super().getitem(obj, argument), "a value")

    _SANDBOX = BoundedSandbox
    return _SANDBOX
