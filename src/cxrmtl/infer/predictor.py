"""Predictions of a trained run on a split: what evaluation, ablation and the clinical surface consume.

``load_run(run)`` (re-exported from ``cxrmtl.runs.checkpoint``) rebuilds the model from the run folder alone;
``predict_split(loaded, cache, index, split)`` runs it over one split of an index and returns ``Predictions``:
row numbers (NIHIndex.table positions), patient ids and per-task outputs (probabilities, or years for age) with
the matching targets and masks, sorted by row. With a process group (torchrun) every rank predicts its shard and
the shards are gathered by row, dropping the padding duplicates of the distributed eval sampler.
``Predictions.save(path)`` / ``Predictions.load(path)`` use one ``.npz`` file (no pickle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrmtl.distributed import DistContext
from cxrmtl.errors import RunError
from cxrmtl.runs.checkpoint import LoadedRun, load_run
from cxrmtl.runs.predictions import Predictions, predict_batches

if TYPE_CHECKING:
    from cxrmtl.data.cache import CacheView
    from cxrmtl.data.nih import NIHIndex

__all__ = ["LoadedRun", "Predictions", "load_run", "predict_batches", "predict_split"]


def predict_split(
    loaded: LoadedRun,
    cache: CacheView,
    index: NIHIndex,
    split: str,
    *,
    batch_size: int = 64,
    ctx: DistContext | None = None,
    num_workers: int = 0,
) -> Predictions:
    """Predictions of ``loaded`` on every good cache row of ``split`` (rank's shard + gather under torchrun)."""
    from cxrmtl.data.loader import make_loader

    ctx = ctx or DistContext(device=loaded.device)
    cfg = loaded.config
    if cache.size != cfg.data.image_size:
        raise RunError(f"{cache.out}: cache holds {cache.size} px images, run {loaded.run} was trained at "
                       f"{cfg.data.image_size} px (data.image_size); build a cache of that size")
    loader = make_loader(cache=cache, index=index, split=split, batch_size=batch_size, shuffle=False,
                         rank=ctx.rank, world_size=ctx.world_size, num_workers=num_workers)
    return predict_batches(loaded.model, loaded.tasks, loader, device=loaded.device, mean=cfg.data.pixel_mean,
                           std=cfg.data.pixel_std, ctx=ctx, split=split)
