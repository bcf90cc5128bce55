"""Start-up: `moa --help` and the chat app's first frame, before any model loads. Target: < 0.5 s each.

- `python -m moa_tui.cli --help` and the `moa` console script (`.venv/bin/moa --help`; when the
  venv has no console script, its exact equivalent `python -c "from moa_tui.cli import main; ..."`),
  each a new process, timed from spawn to exit.
- First frame: `python -m moa_tui.cli --config models.yaml` (the chat app on the shipped `tiny`
  pipeline) in a pseudo-terminal of 100x30, timed from spawn until the screen shows the input
  box's placeholder (the app composed and drew its first frame; models load only when a message
  is sent), then Ctrl+Q.
- Imports: `import moa_tui.cli` (and `moa --help`) must not import llama_cpp, textual or
  huggingface_hub (checked in `sys.modules` of a fresh process).
Medians over several runs, after one untimed warm-up run of each (file cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import CONFIG, REPO, check, median, result, rnd, table, use_temp_data_dir

NAME = "startup"
TARGET = 0.5
HEAVY = ("llama_cpp", "textual", "huggingface_hub")
MARKER = b"Enter sends"


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def first_frame(env: dict, size: tuple[int, int] = (100, 30), timeout: float = 30.0) -> float | None:
    """Seconds from spawning the chat app in a pty until its first frame shows; None if it never does."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "moa_tui.cli", "--config", str(CONFIG)], cwd=REPO,
                               env={**env, "TERM": "xterm-256color", "COLUMNS": str(size[0]), "LINES": str(size[1])},
                               stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    seen, shown = b"", None
    try:
        while time.perf_counter() - start < timeout:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen = (seen + chunk)[-65536:]
                if MARKER in seen:
                    shown = time.perf_counter() - start
                    break
            if process.poll() is not None:
                break
        if process.poll() is None:
            os.write(master, b"\x11")  # Ctrl+Q
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.05)
                if ready:
                    try:
                        os.read(master, 65536)
                    except OSError:
                        break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        os.close(master)
    return shown


def imported(code: str, env: dict) -> list[str]:
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    env = {**os.environ}
    n = 2 if quick else max(3, runs * 2)
    help_module = [sys.executable, "-m", "moa_tui.cli", "--help"]
    script = shutil.which("moa", path=str(Path(sys.executable).parent))
    script_note = None
    if script:
        help_script = [script, "--help"]
        script_label = f"{Path(script).parent.name}/moa --help"
    else:
        help_script = [sys.executable, "-c", "import sys; from moa_tui.cli import main; sys.exit(main())", "--help"]
        script_label = "the console script's equivalent (python -c 'from moa_tui.cli import main; ...') --help"
        script_note = (f"{Path(sys.executable).parent}/moa does not exist (moa-tui is not pip-installed in this "
                       "venv; `make install` creates it): timed its exact equivalent instead")
    for args in (help_module, help_script):
        timed(args, env)  # warm-up
    help_times = {"module": [], "script": []}
    parts = {"python -c pass": "pass", "import textual.app": "import textual.app",
             "import moa_tui.app (textual, the app and its widgets)": "import moa_tui.app"}
    part_times: dict[str, list[float]] = {k: [] for k in parts}
    frames: list[float | None] = []
    first_frame(env)  # warm-up
    for _ in range(n):
        help_times["module"].append(timed(help_module, env))
        help_times["script"].append(timed(help_script, env))
        for label, code in parts.items():
            part_times[label].append(timed([sys.executable, "-c", code], env))
    for _ in range(max(1, n // 2 if quick else runs)):
        frames.append(first_frame(env))
    cli_imports = imported("import moa_tui.cli", env)
    help_imports = imported("import contextlib\nfrom moa_tui.cli import main\n"
                            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(None):\n"
                            "    main(['--help'])", env)
    module_s, script_s = median(help_times["module"]), median(help_times["script"])
    shown = [f for f in frames if f is not None]
    frame_s = median(shown) if shown else None
    rows = [["python -m moa_tui.cli --help", module_s, max(help_times["module"])],
            [script_label, script_s, max(help_times["script"])],
            ["chat app, first frame (pty 100x30)", frame_s, max(shown) if shown else None]]
    rows += [[f"for scale: {label}", median(v), max(v)] for label, v in part_times.items()]
    details = table(["what", "median s", "max s"], rows)
    details.append("")
    details.append(f"Heavy modules imported by `import moa_tui.cli`: {cli_imports or 'none'}; "
                   f"by `moa --help`: {help_imports or 'none'}. Runs: {n} (help), {len(frames)} (first frame).")
    figures = {
        "help_module_s": [rnd(x) for x in help_times["module"]],
        "help_script_s": [rnd(x) for x in help_times["script"]],
        "help_script_command": " ".join(help_script[:1] + help_script[-1:]) if script else "python -c ... --help",
        "first_frame_s": [rnd(x) for x in frames],
        "import_s": {k: rnd(median(v)) for k, v in part_times.items()},
        "heavy_imports_of_import_cli": cli_imports,
        "heavy_imports_of_help": help_imports,
    }
    checks = [
        check("`python -m moa_tui.cli --help`", rnd(module_s), f"< {TARGET} s", module_s < TARGET, "s"),
        check("`moa --help` (console script)", rnd(script_s), f"< {TARGET} s", script_s < TARGET, "s"),
        check("chat app's first frame, before any model loads", rnd(frame_s), f"< {TARGET} s",
              frame_s is not None and frame_s < TARGET, "s"),
        check("`import moa_tui.cli` imports none of llama_cpp, textual, huggingface_hub", None, "none",
              not cli_imports and not help_imports),
    ]
    return result(NAME, "Start-up: moa --help and the app's first frame", checks=checks, figures=figures,
                  details=details, notes=[script_note] if script_note else [])
