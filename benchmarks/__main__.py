"""Run moa-tui's benchmark suite and print a Markdown report: `python -m benchmarks` (`make bench`).

    python -m benchmarks [--only NAME[,NAME]] [--quick] [--runs N] [--out DIR] [--no-write]
                         [--omp-passive] [--list]

Each benchmark is benchmarks/bench_<name>.py with `run(quick, runs) -> dict`; this runs the chosen
ones in order, prints the report (machine, exact command, a summary table of measured vs target, and
each benchmark's details) and writes it to DIR/results.md and the raw figures to DIR/results.json
(DIR: benchmarks/). Exit code 0 when every target was met, 1 when one was missed or a benchmark
failed, 2 for bad arguments. The full suite takes about 15 minutes on 2 cores; `--quick` runs
everything with tiny sizes (figures meaningless; a smoke test).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import REPO, SUITE, check, machine_info

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                     epilog="benchmarks: " + ", ".join(SUITE))
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests (figures meaningless)")
    parser.add_argument("--runs", type=int, default=3, metavar="N",
                        help="measured repetitions per benchmark (default 3; the longest use at most 2)")
    parser.add_argument("--out", type=Path, default=HERE, metavar="DIR",
                        help="where results.md and results.json go (default: benchmarks/)")
    parser.add_argument("--no-write", action="store_true", help="only print the report")
    parser.add_argument("--omp-passive", action="store_true",
                        help="set OMP_WAIT_POLICY=passive (idle llama.cpp threads sleep instead of spinning: "
                             "steadier figures on a machine that other work keeps busy)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SUITE]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(SUITE)})")
        args.names = [n for n in SUITE if n in names]
    else:
        args.names = list(SUITE)
    return args


def command_line(argv: list[str]) -> str:
    python = Path(sys.executable)
    with_venv = python.parent.parent == REPO / ".venv"
    shown = ".venv/bin/python" if with_venv else str(python)
    return shlex.join([shown, "-m", "benchmarks", *argv])


def run_one(name: str, quick: bool, runs: int) -> dict:
    started = time.perf_counter()
    try:
        module = importlib.import_module(SUITE[name])
        outcome = module.run(quick=quick, runs=runs)
    except Exception as exc:
        outcome = {
            "name": name, "title": name, "figures": {}, "details": [],
            "checks": [check("ran to the end", None, "no error", False)],
            "notes": [f"failed: {type(exc).__name__}: {exc}", traceback.format_exc(limit=8)],
            "command": f".venv/bin/python -m benchmarks --only {name}",
        }
    outcome["seconds"] = round(time.perf_counter() - started, 1)
    return outcome


def measured_text(c: dict) -> str:
    value, unit = c.get("measured"), c.get("unit") or ""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    else:
        text = f"{value:,}"
    return f"{text} {unit}".strip() if unit not in ("x",) else f"{text}x"


def met_text(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


def report(machine: dict, command: str, results: list[dict], seconds: float, quick: bool) -> str:
    m = machine
    lines = [
        "# moa-tui benchmark results",
        "",
        f"Command: `{command}` (from the repository root; took {seconds / 60:.1f} min, finished {m['date']}).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, {m['os']}; Python {m['python']}, "
        f"llama-cpp-python {m['llama_cpp_python']}, textual {m['textual']}; GPU offload: "
        f"{'yes' if m['gpu_offload'] else 'no'}. Load average when it started: "
        f"{', '.join(str(x) for x in m['load_average_at_start'])} (1, 5, 15 min); OMP_WAIT_POLICY: "
        f"{m.get('omp_wait_policy') or 'not set'}.",
        "",
    ]
    if quick:
        lines += ["**Quick mode: tiny sizes, the figures mean nothing (a smoke test).**", ""]
    lines += ["## Summary", "", "| benchmark | what | measured | target | met? |", "|---|---|---|---|---|"]
    for r in results:
        for c in r["checks"]:
            lines.append(f"| {r['name']} | {c['what']} | {measured_text(c)} | {c['target']} | {met_text(c['met'])} |")
    checks = [c for r in results for c in r["checks"] if c["met"] is not None]
    met = sum(1 for c in checks if c["met"])
    lines += ["", f"Targets met: {met} of {len(checks)}.", ""]
    for r in results:
        lines += [f"## {r['name']}: {r['title']}", "", f"Command: `{r['command']}` ({r['seconds']:.0f} s).", ""]
        doc = _doc(r["name"])
        if doc:
            lines += [doc, ""]
        if r["details"]:
            lines += [*r["details"], ""]
        for note in r["notes"]:
            lines += [f"Note: {note}" if "\n" not in note else f"```\n{note.rstrip()}\n```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _doc(name: str) -> str:
    """The benchmark module's docstring, minus its first line (the title is already shown)."""
    try:
        doc = importlib.import_module(SUITE[name]).__doc__ or ""
    except Exception:
        return ""
    return "\n".join(doc.strip().splitlines()[1:]).strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list:
        for name in SUITE:
            print(name)
        return 0
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "passive"  # before llama.cpp (libgomp) is loaded: it reads it once
    command = command_line(argv)
    machine = machine_info()
    machine["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    busy = machine["load_average_at_start"][0] > (machine["cores"] or 1) * 0.5
    if busy and not machine["omp_wait_policy"]:
        print(f"warning: the machine is busy (load average {machine['load_average_at_start'][0]}): llama.cpp's idle "
              "threads spin and the figures swing widely; --omp-passive steadies them", file=sys.stderr)
    started = time.perf_counter()
    results = []
    for name in args.names:
        print(f"[{name}] running...", file=sys.stderr, flush=True)
        outcome = run_one(name, args.quick, args.runs)
        results.append(outcome)
        verdicts = [c["met"] for c in outcome["checks"] if c["met"] is not None]
        print(f"[{name}] {outcome['seconds']:.0f} s: {sum(verdicts)} of {len(verdicts)} targets met",
              file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    machine["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    text = report(machine, command, results, seconds, args.quick)
    print(text)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text, encoding="utf-8")
        payload = {"command": command, "machine": machine, "seconds": round(seconds, 1), "quick": args.quick,
                   "runs": args.runs, "results": {r["name"]: r for r in results}}
        (args.out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    missed = any(c["met"] is False for r in results for c in r["checks"])
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
