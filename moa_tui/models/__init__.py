"""Model sources -> a local GGUF file llama.cpp can open (hub downloads, Python packages, local files).

The package's public face: everything outside it imports from here. sources.py decides, packages.py
assembles packaged models, hub_files.py / hub_download.py / hub_errors.py deal with the Hugging Face
hub, progress.py holds what they share.
"""

from .progress import DownloadCancelled, ModelSourceError, ModelStatus, ResolvedModel
from .sources import is_local_source, local_status, offline_mode, resolve_model

__all__ = [
    "DownloadCancelled",
    "ModelSourceError",
    "ModelStatus",
    "ResolvedModel",
    "is_local_source",
    "local_status",
    "offline_mode",
    "resolve_model",
]
