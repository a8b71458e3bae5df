"""Project exceptions. Every error a user can cause is a CxrmtlError whose message names the file or field."""

from __future__ import annotations


class CxrmtlError(Exception):
    """Base class: the CLI prints the message (no traceback) and exits with status 2."""


class DataLayoutError(CxrmtlError):
    """An NIH-layout folder is broken (missing or malformed metadata, overlapping splits, ...)."""


class ImageReadError(CxrmtlError):
    """An image file cannot be read; the message names the file and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CacheError(CxrmtlError):
    """A preprocessing cache is missing, incompatible or corrupt."""


class ConfigError(CxrmtlError):
    """A config file or --set override is invalid; the message names the field."""


class CheckpointError(CxrmtlError):
    """A checkpoint is corrupt, truncated or does not match the config."""


class OutputError(CxrmtlError):
    """An output folder cannot be created or written (a part of its path is a file, no permission, read-only file
    system, full disk); the message names the path."""


class RunError(CxrmtlError):
    """A run directory is missing files or was produced by an incompatible version."""


# --- localize/localization.py, localize/cam.py, ablate/paired.py, ablate/ablation.py ----------------------------------
class EvaluationError(CxrmtlError):
    """Evaluation inputs do not fit together (heatmap, boxes, predictions, labels); the message names the field."""


# --- data/download.py, models/backbone.py (pretrained initialisation) ------------------------------------------------
class DownloadError(CxrmtlError):
    """Fetching or unpacking the NIH release failed (network, disk, damaged or unsafe archive); names the file."""


class PretrainedWeightsError(ConfigError):
    """``model.pretrained`` asks for weights that cannot be obtained, and random init was not allowed."""
