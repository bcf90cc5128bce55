"""Which models.yaml to read, and reading it: --config, $MOA_CONFIG, ./, the user's folder, the shipped one."""

from __future__ import annotations

from pathlib import Path

from ..paths import CONFIG_ENV, config_dir, config_from_env
from .checks import Invalid
from .parse import config_from_data
from .types import CONFIG_NAME, Config, ConfigError
from .yaml_reader import read_yaml


def shipped_config_path() -> Path:
    """The models.yaml that comes with moa-tui: inside the wheel, or at the root of a source checkout."""
    package_dir = Path(__file__).resolve().parent.parent  # moa_tui/
    packaged = package_dir / CONFIG_NAME
    return packaged if packaged.is_file() else package_dir.parent / CONFIG_NAME


def find_config(explicit: str | None = None) -> tuple[Path, str]:
    """The models.yaml to read and why it was chosen; an explicitly named file must exist."""
    if explicit:
        return _must_exist(explicit, "given with --config"), "--config"
    from_env = config_from_env()
    if from_env:
        return _must_exist(from_env, f"set in ${CONFIG_ENV}"), f"${CONFIG_ENV}"
    here = Path.cwd() / CONFIG_NAME
    if here.is_file():
        return here, f"./{CONFIG_NAME}"
    user = config_dir() / CONFIG_NAME
    if user.is_file():
        return user, "user config dir"
    return shipped_config_path(), "shipped default"


def _must_exist(name: str, how: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "no such file"
        raise ConfigError(f"{name}: {problem} ({how})")
    return path


def load_config(path: Path) -> Config:
    """Read and validate a models.yaml; ConfigError says what is wrong, in which file, at which key."""
    path = Path(path)
    data = read_yaml(path)
    try:
        return config_from_data(data, path)
    except Invalid as exc:
        raise ConfigError(f"{path}: {exc}") from None
