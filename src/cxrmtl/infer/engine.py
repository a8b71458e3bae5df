"""``Predictor``: a trained run applied to new images, on torch or ONNX Runtime, loaded once.

``Predictor.from_run(run)`` rebuilds the model (or its ONNX export) and reads the run's operating file
(RUN/thresholds.json through ``runs.operating``). ``preprocess`` is the training preprocessing
(``data.cache.preprocess``: 16-bit min-max to 8 bits, centre square crop, INTER_AREA to S x S) and the input is
normalised with ``data.loader.normalize``, the function training uses, so an image gives the same numbers here as in
``cxrmtl evaluate``. ``predict_files`` decodes in a thread pool (OpenCV releases the GIL) while the previous batch
runs through the model, and yields one ``FileResult`` per path in input order; an unreadable file gets its one-line
reason and never stops the others. Result dicts: ``infer.results`` (docs/predict.md).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cxrmtl.errors import CxrmtlError, RunError
from cxrmtl.infer.results import Result, build_results, is_calibrated
from cxrmtl.runs.data import read_data_kind
from cxrmtl.runs.operating import Thresholds, load_thresholds

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class FileResult:
    """One input file: its result dict, or the one-line reason it could not be read (then ``result`` is None)."""

    path: Path
    result: Result | None
    error: str | None


class Backend(Protocol):
    """Runs the network: normalised float32 (B, 1, S, S) -> task name -> raw head outputs (B, out_dim)."""

    name: str

    def run(self, x: torch.Tensor) -> dict[str, np.ndarray]: ...


class TorchBackend:
    """The PyTorch model itself (eval mode, no autograd)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.eval()
        self.device = device

    def run(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.model(x.to(self.device))
        return {name: value.float().cpu().numpy() for name, value in out.items()}


def decode_file(path: Path, *, size: int) -> np.ndarray:
    """read_gray + the training preprocessing: any PNG/JPEG/DICOM file -> (size, size) uint8."""
    from cxrmtl.data.cache import preprocess
    from cxrmtl.data.imageio import read_gray

    return preprocess(read_gray(path), size=size)


def _one_line(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # ImageReadError: the path is reported next to it already
    text = reason if isinstance(reason, str) else f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())


class Predictor:
    """A run ready to predict: model (torch or ONNX Runtime), tasks, preprocessing and operating points."""

    def __init__(self, *, run: Path, backend: Backend, tasks: Sequence[Any], config: Any,
                 operating: Thresholds | None, data_kind: str, model: torch.nn.Module | None = None) -> None:
        self.run = Path(run)
        self.model = model  # the torch network (eval mode), also with the ONNX backend: Grad-CAM needs gradients
        self._backend = backend
        self.tasks = list(tasks)
        self.config = config
        self.operating = operating
        self.data_kind = data_kind
        self.image_size: int = int(config.data.image_size)
        self.pixel_mean: float = float(config.data.pixel_mean)
        self.pixel_std: float = float(config.data.pixel_std)
        self.finding_names: tuple[str, ...] = tuple(
            name for t in self.tasks if t.target == "findings" for name in t.output_names)
        self.calibrated: bool = is_calibrated(self.tasks, operating)

    @property
    def backend(self) -> str:
        """The backend actually used: "torch" or "onnx"."""
        return self._backend.name

    @classmethod
    def from_run(cls, run: Path, *, backend: str = "auto", device: str = "cpu", which: str = "best",
                 threads: int | None = None) -> Predictor:
        """Load ``run`` once. ``backend``: torch, onnx (exports RUN/export/model-<which>.onnx when missing or
        stale) or auto (``choose_backend``). ``threads`` caps ONNX Runtime's intra-op threads (default: its own)."""
        from cxrmtl.runs.checkpoint import load_run

        run = Path(run)
        if backend not in BACKENDS:
            raise RunError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
        loaded = load_run(run, which=which, device=device)
        chosen = choose_backend(backend, device=device)
        impl: Backend | None = None
        if chosen == "onnx":
            impl = _onnx_backend(loaded, which=which, threads=threads, required=backend == "onnx")
        if impl is None:
            impl = TorchBackend(loaded.model, loaded.device)
        operating = load_thresholds(run)
        predictor = cls(run=run, backend=impl, tasks=loaded.tasks, config=loaded.config, operating=operating,
                        data_kind=read_data_kind(run), model=loaded.model)
        predictor._warn_operating()
        return predictor

    def _warn_operating(self) -> None:
        if self.operating is None:
            log.warning("%s has no thresholds.json (run `cxrmtl evaluate %s --data ROOT` to choose them on "
                        "validation): probabilities only, thresholds and positive calls are null", self.run, self.run)
        elif not self.calibrated:
            log.warning("%s: thresholds.json holds no usable temperature: probabilities are not calibrated", self.run)

    # ------------------------------------------------------------------------------------------------ prediction
    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """A decoded image (``read_gray`` output, uint8/uint16 2-D) -> (S, S) uint8, exactly as training caches it."""
        from cxrmtl.data.cache import preprocess

        return preprocess(image, size=self.image_size)

    def normalize(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Preprocessed (S, S) uint8 images -> the float (B, 1, S, S) network input (``data.loader.normalize``)."""
        from cxrmtl.data.loader import normalize

        return normalize(torch.from_numpy(self._stack(images)), mean=self.pixel_mean, std=self.pixel_std)

    def predict_outputs(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Preprocessed (S, S) uint8 images -> task -> (B, out_dim) ``Task.predict`` values (uncalibrated
        probabilities, years for age), one forward pass for the whole batch."""
        raw = self._backend.run(self.normalize(images))
        return {t.name: t.predict(torch.from_numpy(raw[t.name])).numpy() for t in self.tasks}

    def predict_logits(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Raw head outputs (logits; standardised age) of one batch: what the ONNX parity check compares."""
        return self._backend.run(self.normalize(images))

    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[Result]:
        """Preprocessed (S, S) uint8 images -> one result dict per image (schema in docs/predict.md)."""
        if len(images) == 0:
            return []
        return build_results(self.predict_outputs(images), tasks=self.tasks, operating=self.operating)

    def predict_files(self, paths: Sequence[Path], *, batch_size: int = 16, workers: int = 2) -> Iterator[FileResult]:
        """Decode + preprocess in ``workers`` threads, overlapped with inference; one FileResult per path, in order."""
        if batch_size < 1 or workers < 1:
            raise RunError(f"batch_size and workers must be at least 1, got {batch_size} and {workers}")
        paths = [Path(p) for p in paths]
        window = batch_size * 2 + workers  # the next batch decodes while this one runs; memory stays bounded
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxrmtl-decode") as pool:
            pending: deque[tuple[Path, Future]] = deque()
            todo = iter(paths)
            group: list[tuple[Path, np.ndarray | None, str | None]] = []
            n_good = 0

            def refill() -> None:
                while len(pending) < window:
                    path = next(todo, None)
                    if path is None:
                        return
                    pending.append((path, pool.submit(decode_file, path, size=self.image_size)))

            refill()
            while pending:
                path, future = pending.popleft()
                refill()
                try:
                    group.append((path, future.result(), None))
                    n_good += 1
                except CxrmtlError as exc:
                    group.append((path, None, _one_line(exc)))
                except Exception as exc:  # a decoder bug on one odd file must not stop the others
                    group.append((path, None, _one_line(exc)))
                if n_good == batch_size:
                    yield from self._flush(group)
                    group, n_good = [], 0
            yield from self._flush(group)

    def _flush(self, group: list[tuple[Path, np.ndarray | None, str | None]]) -> Iterator[FileResult]:
        good = [image for _, image, _ in group if image is not None]
        results = iter(self.predict_arrays(good))
        for path, image, error in group:
            yield FileResult(path=path, result=next(results) if image is not None else None, error=error)

    def _stack(self, images: Sequence[np.ndarray]) -> np.ndarray:
        s = self.image_size
        for image in images:
            if image.shape != (s, s) or image.dtype != np.uint8:
                raise RunError(f"predict: expected preprocessed ({s}, {s}) uint8 images (Predictor.preprocess), "
                               f"got {image.shape} {image.dtype}")
        return np.stack(images)[:, None]


# ---------------------------------------------------------------------------------------------------- backends
# Measured on this project's 2-core CPU machine (BENCHMARKS.md, "Predict and export (issue 9)"): ONNX Runtime beat
# torch eager for densenet121 @ 224, so "auto" takes ONNX Runtime on CPU whenever onnxruntime is importable.
AUTO_CPU_BACKEND = "onnx"


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def choose_backend(backend: str, *, device: str) -> str:
    """The backend "auto" resolves to: torch on a GPU; on CPU ``AUTO_CPU_BACKEND`` when ONNX Runtime is installed."""
    if backend != "auto":
        return backend
    if str(device) != "cpu":
        return "torch"
    if AUTO_CPU_BACKEND == "onnx" and not onnxruntime_available():
        return "torch"
    return AUTO_CPU_BACKEND


def _onnx_backend(loaded: Any, *, which: str, threads: int | None, required: bool) -> Backend | None:
    """The cached ONNX export of the run on ONNX Runtime; None (auto only) when it cannot be made here."""
    from cxrmtl.infer.onnx_export import OnnxBackend, cached_export

    try:
        path = cached_export(loaded, which=which)
        return OnnxBackend(path, threads=threads)
    except (CxrmtlError, OSError, ImportError) as exc:
        if required:
            raise RunError(f"{loaded.run}: ONNX backend unavailable ({_one_line(exc)})") from exc
        log.warning("%s: ONNX backend unavailable (%s); using torch", loaded.run, _one_line(exc))
        return None

