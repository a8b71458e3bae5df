"""Run folders for predict/export tests and bench/bench_predict.py: a model with its initial (random) weights saved
as a real run (config.yaml, labels.json, checkpoints/best.pt), for checks where the weights do not matter (speed,
export parity, preprocessing). Training tiny runs lives in trainkit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrmtl.config import Config, to_dict
from cxrmtl.runs.build import build_model, build_tasks_for
from cxrmtl.runs.checkpoint import save_checkpoint
from cxrmtl.runs.layout import RunDir, label_map


def write_untrained_run(out: Path, cfg: Config, *, seed: int = 0) -> Path:
    """A run folder holding ``cfg``'s network with seeded initial weights as both best.pt and last.pt."""
    tasks = build_tasks_for(cfg, pos_weight=None)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(cfg, tasks, pretrained=False)
    run = RunDir(out)
    run.create(cfg, tasks, world_size=1)
    state = {"model": model.state_dict(), "config": to_dict(cfg), "labels": label_map(tasks), "epoch": 0,
             "batch_in_epoch": 0, "step": 0}
    save_checkpoint(run.best, state)
    save_checkpoint(run.last, state)
    return out


def dicom_bytes(pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", **elements: object) -> bytes:
    """A minimal single-frame DX DICOM file (preamble, file meta) holding ``pixels`` (uint8/uint16, 2-D), or no pixel
    data at all; ``elements`` are set on the dataset (PatientID=..., StudyInstanceUID=...)."""
    import io

    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_dicom(path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2") -> Path:
    """``dicom_bytes`` written to ``path`` (Modality DX)."""
    path.write_bytes(dicom_bytes(pixels, photometric=photometric, Modality="DX"))
    return path


def write_bad_files(folder: Path) -> dict[str, str]:
    """Files predict must report, not crash on: name -> a word their one-line error contains ("" = any)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_seed.png"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(good)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("not an image at all\n")
    (folder / "empty.png").write_bytes(b"")
    write_dicom(folder / "nopixels.dcm", None)
    return {"truncated.png": "truncat", "text.png": "", "empty.png": "empty", "nopixels.dcm": "pixel"}
