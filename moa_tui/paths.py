"""Every folder and environment variable moa reads, in one place.

Each folder is a function, not a constant, so a test (or a user) that sets the variable after import
still moves it. Folders are not created here; whoever writes into one creates it. The one variable
read elsewhere is the one a models.yaml names itself (an endpoint's `api_key_env`).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "moa-tui"

CONFIG_ENV = "MOA_CONFIG"  # a models.yaml to read instead of the search (config.find_config)
DATA_DIR_ENV = "MOA_DATA_DIR"  # transcripts, probe and eval reports, input history
CACHE_DIR_ENV = "MOA_CACHE_DIR"  # assembled package models, what moa remembers between runs
LOG_FILE_ENV = "MOA_LOG_FILE"  # llama.cpp's and moa's log
# Set to 1 to skip the memory check: the estimate is a model of llama.cpp's allocations, not a
# measurement, and free memory is a snapshot (the OS can reclaim caches, swap exists, another build
# of llama.cpp may allocate differently). A user who knows better must be able to try.
SKIP_MEMORY_CHECK_ENV = "MOA_SKIP_MEMORY_CHECK"
HF_OFFLINE_ENV = "HF_HUB_OFFLINE"  # huggingface_hub's own: use the cache only
HF_ENDPOINT_ENV = "HF_ENDPOINT"  # huggingface_hub's own: another hub (the tests' loopback one)
HF_TIMEOUT_ENV = "HF_HUB_DOWNLOAD_TIMEOUT"  # huggingface_hub's own: seconds a read may stall
HF_DEFAULT_ENDPOINT = "https://huggingface.co"

SHIPPED_DATA = Path(__file__).resolve().parent / "data"  # the eval dataset and probe prompts moa ships

_TRUE_VALUES = ("1", "true", "yes", "on")


def env_flag(name: str) -> bool:
    """Whether environment variable `name` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in _TRUE_VALUES


def _from_env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    """The per-user config folder (~/.config/moa-tui on Linux): models.yaml, settings.json."""
    return Path(platformdirs.user_config_dir(APP_NAME))


def config_from_env() -> str | None:
    return os.environ.get(CONFIG_ENV) or None


def data_dir() -> Path:
    """moa's data folder ($MOA_DATA_DIR, else ~/.local/share/moa-tui on Linux)."""
    return _from_env(DATA_DIR_ENV) or Path(platformdirs.user_data_dir(APP_NAME))


def transcripts_dir() -> Path:
    return data_dir() / "transcripts"


def cache_dir() -> Path:
    """moa's own cache folder ($MOA_CACHE_DIR, else ~/.cache/moa-tui on Linux)."""
    return _from_env(CACHE_DIR_ENV) or Path(platformdirs.user_cache_dir(APP_NAME))


def log_file() -> Path:
    """The log file ($MOA_LOG_FILE, else moa.log in the per-user log folder)."""
    return _from_env(LOG_FILE_ENV) or Path(platformdirs.user_log_dir(APP_NAME)) / "moa.log"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub computes it, but read now rather than at import.

    huggingface_hub freezes HF_HOME and HF_HUB_CACHE into constants when first imported; reading them
    here at call time lets a test (or a user) set them later.
    """
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hf_endpoint() -> str:
    """The hub to talk to: $HF_ENDPOINT (the tests' loopback hub), else huggingface.co."""
    return (os.environ.get(HF_ENDPOINT_ENV) or HF_DEFAULT_ENDPOINT).rstrip("/")


def hf_download_timeout() -> str | None:
    """$HF_HUB_DOWNLOAD_TIMEOUT: seconds a download may go without a byte (None: moa's own default)."""
    return os.environ.get(HF_TIMEOUT_ENV) or None
