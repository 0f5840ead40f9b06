"""The training input pipeline: records -> static-shape, host-sharded, checkpointable batches.

grain graph (per host):
    range(N) -> shuffle(seed; reshuffled every epoch) -> repeat(num_epochs)
    -> [shard_index::shard_count] -> map(ExampleMaker) -> CountingBatch(host batch)
    -> mp_prefetch(worker_count)
Shuffling before sharding gives every host a different slice of every epoch; the slices of all
hosts are disjoint and together cover it. A batch is
    input_ids int32 [B, L]   ids with each image expanded to num_image_tokens IMAGE_TOKEN_INDEX,
                                                      right-padded with the pad id (unk, §3.1)
    labels int32 [B, L]      unshifted; IGNORE_INDEX on BOS, instructions, image, padding
    attention_mask int32 [B, L]  1 on real tokens (image positions included)
    pixel_values float32 [B, H, W, 3]  NHWC, CLIP-normalised; zeros for text-only (§3.5)
    has_image bool [B]
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain
import numpy as np

from sgv_jax.constants import CLIP_MEAN, CLIP_STD
from sgv_jax.data import batching, encode, images, templates, tokenize
from sgv_jax.data.records import RecordFile
from sgv_jax.data.validate import BadRecord

logger = logging.getLogger(__name__)
# What the train step consumes, and what a batch carries besides (for reports).
MODEL_KEYS = ("input_ids", "labels", "attention_mask", "pixel_values")
BATCH_KEYS = (*MODEL_KEYS, "has_image")


class ExampleMaker:
    """Record index -> one padded example, or a skip marker (BadRecord re-raised if strict)."""

    def __init__(self, records: RecordFile, image_folder: str, tokenizer: tokenize.Tokenizer,
                              template: templates.Template, image_config: images.ImageConfig,
                              num_image_tokens: int, max_length: int, strict: bool = False):
        self.records = records
        self.image_folder = image_folder
        self.tokenizer = tokenizer
        self.template = template
        self.process_image = images.ImageProcessor(image_config)
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.strict = strict

    def __call__(self, index: int) -> dict[str, Any]:
        try:
            return self.make(int(index))
        except BadRecord as e:
            if self.strict:
                raise
            return batching.skip_marker(e.reason, e.record_id)

    def make(self, index: int) -> dict[str, np.ndarray]:
        """The padded example of record `index`; raises BadRecord."""
        encoded = encode.encode_record(
                self.records[index], self.tokenizer, self.template,
                num_image_tokens=self.num_image_tokens, max_length=self.max_length, index=index)
        example = encode.pad(encoded["expanded_input_ids"], encoded["expanded_labels"],
                                                  self.max_length, self.tokenizer.pad_id)
        if encoded["image"] is None:
            example["pixel_values"] = self.process_image.blank()
        else:
            image = load_record_image(self.image_folder, encoded["image"], encoded["id"])
            example["pixel_values"] = self.process_image(image)
        example["has_image"] = np.asarray(encoded["image"] is not None)
        return example


def load_record_image(image_folder: str, relative: str, record_id: str):
    """Opens `image_folder/relative`; BadRecord("missing_image" | "bad_image") on failure."""
    path = os.path.join(image_folder, relative)
    try:
        return images.load_image(path)
    except FileNotFoundError:
        raise BadRecord("missing_image", record_id, f"{path} not found") from None
    except Exception as e:  # noqa: BLE001 -- PIL raises many types for a corrupt file.
        raise BadRecord("bad_image", record_id, f"{path}: {type(e).__name__}: {e}") from None


class DataIterator:
    """Batches of numpy arrays (BATCH_KEYS) with checkpointable state and skip counters.

    `skip_counts()` is readable at any time; `get_state()` is JSON-serialisable and includes
    the counters, so a restored run continues both the batches and the counts.
    """

    def __init__(self, dataset: grain.IterDataset, log_first: int = 5):
        self._iterator = dataset.__iter__()
        self._counts = dict.fromkeys(batching.COUNTED, 0)
        self._log_first = log_first
        self._logged = dict.fromkeys(batching.COUNTED, 0)

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            element = next(self._iterator)
            self._add_counts(element["skip_counts"], element["skipped_ids"])
            if "input_ids" in element:  # otherwise a counts-only element from a finished worker
                return {key: np.asarray(element[key]) for key in BATCH_KEYS}

    def _add_counts(self, counts: np.ndarray, skipped_ids: list[tuple[str, str]]) -> None:
        for reason, n in zip(batching.COUNTED, counts.tolist()):
            self._counts[reason] += n
        for reason, record_id in skipped_ids:
            if self._logged[reason] < self._log_first:
                self._logged[reason] += 1
                logger.warning("skipped record %r: %s", record_id, reason)

    def skip_counts(self) -> dict[str, int]:
        """Examples dropped so far on this host, per reason (batching.COUNTED)."""
        return dict(self._counts)

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._iterator.get_state(), "skip_counts": dict(self._counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state["grain"])
        self._counts = {**dict.fromkeys(batching.COUNTED, 0), **state["skip_counts"]}

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def make_dataset(
        data_file: str,
        image_folder: str,
        tokenizer: str | tokenize.Tokenizer,
        template: str = "v1",
        *,
        aspect: str = "square",
        image_size: int = 336,
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
        num_image_tokens: int = 576,
        max_length: int = 2048,
        global_batch_size: int,
        seed: int = 0,
        num_epochs: int | None = 1,
        shard_index: int | None = None,
        shard_count: int | None = None,
        worker_count: int = 0,
        worker_buffer_size: int = 2,
        strict: bool = False,
        index_dir: str | None = None,
) -> DataIterator:
    """Builds this host's batch iterator.

    `global_batch_size` is split evenly over `shard_count` hosts (default: the jax processes);
    `num_epochs=None` repeats forever. `tokenizer` is a tokenizer or a path for load_tokenizer.
    """
    if shard_index is None or shard_count is None:
        import jax  # only here: the data modules themselves do not need jax
        shard_index, shard_count = jax.process_index(), jax.process_count()
    if global_batch_size % shard_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the "
                                          f"{shard_count} hosts")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = tokenize.load_tokenizer(tokenizer)
    records = RecordFile(data_file, index_dir)
    maker = ExampleMaker(
            records, image_folder, tokenizer, templates.get_template(template),
            images.ImageConfig(size=image_size, aspect=aspect, mean=tuple(image_mean),
                                                  std=tuple(image_std)),
            num_image_tokens, max_length, strict)
    return batched_iterator(len(records), maker, seed, num_epochs, shard_index, shard_count,
                            global_batch_size, worker_count, worker_buffer_size)


def batched_iterator(length: int, make_example, seed: int, num_epochs: int, shard_index: int,
                     shard_count: int, global_batch_size: int, worker_count: int,
                     worker_buffer_size: int, with_position: bool = False) -> DataIterator:
    """The one grain chain every data source goes through: a seeded shuffle of record indices
    per epoch, this host's every `shard_count`-th one, `make_example(record_index)` — or
    `make_example(position, record_index)` with `with_position` (the index in this host's
    stream, for per-sample randomness a resumed run draws again) — counted batches, optional
    worker processes (`make_example` must pickle for those: a class instance, not a lambda)."""
    ds = grain.MapDataset.range(length).shuffle(seed=seed).repeat(num_epochs)
    ds = ds[shard_index::shard_count]
    ds = (ds.map_with_index(make_example) if with_position else ds.map(make_example))
    ds = ds.to_iter_dataset()
    ds = batching.CountingBatchIterDataset(ds, global_batch_size // shard_count)
    if worker_count > 0:
        # grain's worker processes read absl flags; outside an absl app (scripts, pytest)
        # nothing parsed them, so take their defaults.
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
    return DataIterator(ds)
