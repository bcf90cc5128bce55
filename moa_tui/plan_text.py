"""The memory plan as text: the table, budget and notes that `moa plan` prints and F2 shows."""

from __future__ import annotations

from .console import human_size as _size
from .console import table
from .planner import NOT_DOWNLOADED, Plan

PLAN_HEADER = ["model", "file size", "KV cache", "total", "runs on", "threads", "in memory"]


def plan_rows(result: Plan) -> list[list[str]]:
    rows = []
    for m in result.models:
        if m.remote:
            rows.append([m.name, "-", "-", "-", "remote", "-", "-"])
            continue
        size = m.size
        if size is None:
            rows.append([m.name, "?", "?", "?", "?", m.threads_text, f"swapped ({m.unknown or NOT_DOWNLOADED})"])
            continue
        where = m.residency if m.fits else "does not fit"
        kv = _size(size.kv_cache) + (f" + {_size(size.recurrent_state)} state" if size.recurrent_state else "")
        kv += f" + {_size(m.saved_states)} saved" if m.saved_states else ""
        rows.append([m.name, _size(size.file_size), kv, _size(size.total + m.saved_states), m.placement,
                     m.threads_text, where])
    return rows


def budget_lines(result: Plan) -> list[str]:
    b = result.budget

    def why(source: str) -> str:
        return f" ({source})" if source else ""

    ram = f"{_size(result.ram_peak)} of {_size(b.ram)}" if b.ram is not None else f"{_size(result.ram_peak)}"
    lines = [f"RAM: {ram} at the peak of a turn{why(b.ram_source)}"]
    if b.vram is not None:
        lines.append(f"GPU: {_size(result.vram_peak)} of {_size(b.vram)} at the peak{why(b.vram_source)}")
    else:
        lines.append(f"GPU: not used{why(b.vram_source)}")
    lines.append(f"CPU: {b.cpu_count} cores")
    return lines


def plan_title(result: Plan) -> str:
    mode = "parallel" if result.parallel else "one model at a time"
    return f"Memory plan for pipeline '{result.pipeline}' ({mode})"


def plan_table(result: Plan) -> str:

    return table(plan_rows(result), PLAN_HEADER)


def plan_details(result: Plan) -> str:
    """The budget, the notes and the errors under the table."""
    lines = budget_lines(result)
    details = [f"{m.name}: {note}" for m in result.models for note in m.notes]
    if details or result.notes:
        lines += ["", "Notes:"]
        lines += [f"- {note}" for note in [*details, *result.notes]]
    if result.errors:
        lines += ["", "Does not fit:"]
        lines += [f"- {error}" for error in result.errors]
    return "\n".join(lines)


def render_plan(result: Plan) -> str:
    """The plan as plain text: a table, the budget, notes and errors (for `moa plan`)."""
    return "\n\n".join([plan_title(result), plan_table(result), plan_details(result)])
