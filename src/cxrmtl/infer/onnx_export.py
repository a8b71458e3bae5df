"""ONNX export of a run (``cxrmtl export``) and the ONNX Runtime backend of the Predictor.

The exported graph takes ``image``: float32 (batch, 1, S, S), already normalised as ``(u8 / 255 - mean) / std``
after the training preprocessing, with a dynamic batch axis, and returns one named output per task head (raw head
outputs: logits, standardised age). Exporter mode and opset are pinned: the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``, deterministic and quick for timm CNNs) at ``EXPORT_OPSET``. Everything a
third party needs to use the file alone is in its ``metadata_props`` (keys ``cxrmtl.*``, values JSON; see
docs/export.md): finding names, per-output task and transform, thresholds, temperatures, image size,
preprocessing and normalisation, code version, data kind, checkpoint digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrmtl.errors import RunError
from cxrmtl.runs.operating import load_thresholds

log = logging.getLogger(__name__)

EXPORT_OPSET = 17  # ONNX Runtime >= 1.14 runs it; every op DenseNet/ResNet/ConvNeXt need is there
MIN_OPSET = 9  # the TorchScript exporter's oldest
EXPORT_FORMAT = 1  # bump when the graph's inputs/outputs or the metadata keys change (stales cached exports)
EXPORTER = "torchscript"  # torch.onnx.export(dynamo=False)
INPUT_NAME = "image"
EXPORT_DIR = "export"  # RUN/export/model-<which>.onnx: the Predictor's cached export
META_PREFIX = "cxrmtl."
PREPROCESSING = ("decode to gray (PNG/JPEG/DICOM; 16-bit scaled min..max to 0..255), centre square crop, "
                 "cv2.INTER_AREA resize to image_size x image_size, uint8")


def output_name(task_name: str) -> str:
    """ONNX output name of a task head: the task name with anything but letters, digits and _ turned into _."""
    return re.sub(r"\W", "_", task_name)


class _TupleOutputs(torch.nn.Module):
    """The multitask network with its dict output as a tuple in task order (what the exporter names)."""

    def __init__(self, model: torch.nn.Module, task_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.task_names = tuple(task_names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[name] for name in self.task_names)


def file_digest(path: Path) -> str:
    """blake2b-128 of a file (the checkpoint an export came from)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _transform(task: Any) -> dict[str, Any]:
    if task.kind == "regression":
        return {"kind": "affine", "scale": float(task.scale), "offset": float(task.offset), "unit": "years"}
    return {"kind": "sigmoid", "unit": "probability"}


def export_metadata(loaded: Any, *, opset: int, data_kind: str) -> dict[str, str]:
    """The ``cxrmtl.*`` metadata_props of an export of ``loaded`` (values are JSON text)."""
    from cxrmtl.version import code_version

    cfg = loaded.config
    operating = load_thresholds(loaded.run)
    outputs = {output_name(t.name): {"task": t.name, "kind": t.kind, "columns": list(t.output_names),
                                     "transform": _transform(t)} for t in loaded.tasks}
    findings = [n for t in loaded.tasks if t.target == "findings" for n in t.output_names]
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "code_version": code_version(),
        "exporter": {"mode": EXPORTER, "torch": torch.__version__, "opset": opset},
        "backbone": cfg.model.backbone,
        "image_size": int(cfg.data.image_size),
        "input": {"name": INPUT_NAME, "shape": ["batch", 1, int(cfg.data.image_size), int(cfg.data.image_size)],
                  "dtype": "float32", "preprocessing": PREPROCESSING},
        "normalization": {"formula": "(u8 / 255 - mean) / std", "mean": float(cfg.data.pixel_mean),
                          "std": float(cfg.data.pixel_std)},
        "finding_names": findings,
        "outputs": outputs,
        "thresholds": operating.to_json()["methods"] if operating is not None else None,
        "threshold_method": operating.default if operating is not None else None,
        "temperatures": operating.temperatures if operating is not None else None,
        "data_kind": data_kind,
        "checkpoint": {"file": loaded.checkpoint.name, "blake2b": file_digest(loaded.checkpoint),
                       "epoch": loaded.epoch, "step": loaded.step},
    }
    return {META_PREFIX + key: json.dumps(value) for key, value in meta.items()}


def check_opset(opset: int) -> None:
    """RunError unless ``opset`` is one the TorchScript exporter and the installed onnx both handle."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise RunError(f"opset: {opset} is outside what this exporter and onnx {onnx.__version__} support "
                       f"({MIN_OPSET}..{newest}); {EXPORT_OPSET} is the tested one")


def export_onnx(loaded: Any, out: Path, *, opset: int = EXPORT_OPSET, data_kind: str | None = None) -> Path:
    """Export the model of a ``LoadedRun`` to ``out`` (atomically) with its metadata; returns ``out``."""
    import onnx

    from cxrmtl.runs.data import read_data_kind

    out = Path(out)
    check_opset(opset)
    names = [output_name(t.name) for t in loaded.tasks]
    if len(set(names)) != len(names):
        raise RunError(f"{loaded.run}: task names {[t.name for t in loaded.tasks]} collide as ONNX output names")
    size = int(loaded.config.data.image_size)
    model = _TupleOutputs(loaded.model, [t.name for t in loaded.tasks]).cpu().eval()
    dummy = torch.zeros(1, 1, size, size)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _torch_export(model, dummy, tmp, opset=opset, names=names)
        proto = onnx.load(str(tmp))
        meta = export_metadata(loaded, opset=opset, data_kind=data_kind or read_data_kind(loaded.run))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = (f"cxrmtl multitask chest X-ray model ({loaded.config.model.backbone}); inputs and "
                            "outputs are described in metadata_props cxrmtl.*")
        proto.producer_name = "cxrmtl"
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    except OSError as exc:
        raise RunError(f"{out}: cannot write the ONNX file ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    log.info("exported %s -> %s (opset %d)", loaded.checkpoint, out, opset)
    return out


def _torch_export(model: torch.nn.Module, dummy: torch.Tensor, path: Path, *, opset: int, names: list[str]) -> None:
    """torch.onnx.export pinned to the TorchScript exporter; its failures become RunError naming the opset."""
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo; it is pinned here on purpose.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=names,
                              dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]}, do_constant_folding=True)
    except (RuntimeError, ValueError, TypeError, torch.onnx.errors.OnnxExporterError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"ONNX export at opset {opset} failed: {first}") from exc


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``cxrmtl.*`` metadata of an exported file, JSON-decoded, keys without the prefix."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError...
        raise RunError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    return {p.key[len(META_PREFIX):]: json.loads(p.value) for p in proto.metadata_props
            if p.key.startswith(META_PREFIX)}


def cached_export(loaded: Any, *, which: str = "best") -> Path:
    """RUN/export/model-<which>.onnx, (re)exported when missing or made from another checkpoint or format."""
    path = Path(loaded.run) / EXPORT_DIR / f"model-{which}.onnx"
    if path.is_file():
        try:
            meta = read_metadata(path)
            fresh = (meta.get("format") == EXPORT_FORMAT
                     and (meta.get("checkpoint") or {}).get("blake2b") == file_digest(loaded.checkpoint))
        except (RunError, ValueError):
            fresh = False
        if fresh:
            return path
        log.info("%s is stale: re-exporting", path)
    return export_onnx(loaded, path)


class OnnxBackend:
    """An exported model on ONNX Runtime's CPU provider; returns head outputs keyed by task name."""

    name = "onnx"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        meta = read_metadata(path)
        self.path = Path(path)
        self.outputs: dict[str, str] = {onnx_name: doc["task"] for onnx_name, doc in meta["outputs"].items()}
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._names = [o.name for o in self.session.get_outputs()]

    def run(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        values = self.session.run(self._names, {INPUT_NAME: np.ascontiguousarray(x.cpu().numpy(), np.float32)})
        return {self.outputs[name]: value for name, value in zip(self._names, values, strict=True)}
