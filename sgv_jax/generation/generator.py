"""A loaded model ready to answer: checkpoint + tokenizer + image preprocessing + device mesh.

`Generator.complete(prompts, images, ...)` is the one entry point the chat, run and caption
commands share: prompt strings (with `<image>` marking the image) and preprocessed pixels in,
text out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sgv_jax.checkpoint_sgv import load_sgv, read_sgv_config
from sgv_jax.constants import EOS_ID
from sgv_jax.data.images import ImageConfig, ImageProcessor
from sgv_jax.data.tokenize import SentencePieceTokenizer, load_tokenizer
from sgv_jax.generation import prompts
from sgv_jax.generation.decode import generate_tokens
from sgv_jax.generation.sampling import GREEDY, SamplingConfig
from sgv_jax.model_dir import check_sgv_dir
from sgv_jax.models import llava
from sgv_jax.models.config import VLMConfig
from sgv_jax.models.llava import cast_floating
from sgv_jax.sharding import ACTIVATION_RULES, batch_sharding, make_mesh


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str  # stripped, cut before any stop string
    tokens: list[int]  # new tokens, without EOS; cut where the stop string completes
    finish: str  # "eos" | "stop" | "length"


@dataclasses.dataclass
class Generator:
    cfg: VLMConfig
    params: dict  # in the compute dtype, placed on `mesh` when one is given, the decoder's
    #               layers one tree each (llava.unstack_decoder: no copy per generate call),
    #               q|k|v and gate|up fused unless a tensor-parallel mesh splits them
    #               (llava.fuse_decoder)
    tokenizer: SentencePieceTokenizer
    image_processor: ImageProcessor
    dtype: str = "float32"
    mesh: Mesh | None = None
    bucket: int = 32  # prompt-length granularity of compiled programs

    @classmethod
    def from_params(cls, cfg: VLMConfig, params: dict, tokenizer: SentencePieceTokenizer, *,
                    dtype: str = "float32", aspect: str | None = None, mesh: Mesh | None = None,
                    bucket: int = 32) -> Generator:
        """`aspect` None: the family's image preprocessing (`default_aspect`)."""
        params = cast_floating(params, dtype)  # once, not per decode step
        aspect = aspect or default_aspect(cfg)
        if mesh is not None:
            params = jax.device_put(params, llava.param_shardings(cfg, mesh))
        if mesh is None or mesh.shape["tensor"] == 1:  # kernels whole on every device
            params = llava.fuse_decoder(params)
        else:
            params = llava.unstack_decoder(params)
        processor = ImageProcessor(ImageConfig(size=cfg.vision.image_size, aspect=aspect))
        return cls(cfg, params, tokenizer, processor, dtype, mesh, bucket)

    @classmethod
    def from_checkpoint(cls, path: str, *, tokenizer: str | None = None,
                        dtype: str = "float32", aspect: str | None = None, mesh: Mesh | None = None,
                        bucket: int = 32) -> Generator:
        """An sgv checkpoint directory (`save_sgv`) of any model family (LLaVA / ShareGPT4V or
        MiniGPT-4: the config's `family` picks the model); the tokenizer defaults to its
        `tokenizer/` folder."""
        check_sgv_dir(path, "checkpoint")
        tokenizer_path = tokenizer or os.path.join(path, "tokenizer")
        if tokenizer and not os.path.exists(tokenizer):
            raise FileNotFoundError(f"tokenizer {tokenizer} does not exist")
        if not os.path.exists(tokenizer_path):
            raise FileNotFoundError(f"{path}: no tokenizer/ folder in the checkpoint; pass "
                                    "--tokenizer DIR (a folder with tokenizer.model)")
        shardings = None
        if mesh is not None:  # restore straight into the mesh layout, group by group
            cfg = VLMConfig.from_dict(read_sgv_config(path)["model"])
            shardings = llava.param_shardings(cfg, mesh)
        cfg, params = load_sgv(path, shardings, jnp.dtype(dtype))
        return cls.from_params(cfg, params, load_tokenizer(tokenizer_path), dtype=dtype,
                               aspect=aspect, mesh=mesh, bucket=bucket)

    @property
    def batch_multiple(self) -> int:
        """Batches are padded to a multiple of the data-parallel device count."""
        if self.mesh is None:
            return 1
        return int(np.prod([self.mesh.shape[a] for a in ACTIVATION_RULES["act_batch"]]))

    @property
    def default_template(self) -> str:
        """The prompt template of this model's family (`prompts.default_template`)."""
        return prompts.default_template(self.cfg)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return (self.tokenizer.eos_id,) if self.tokenizer.eos_id >= 0 else (EOS_ID,)

    def preprocess(self, image) -> np.ndarray:
        return self.image_processor(image)

    def complete(self, prompt_texts: Sequence[str], images: Sequence[np.ndarray | None],
                 sampling: SamplingConfig = GREEDY, *, max_new_tokens: int = 128,
                 stop_strings: Sequence[str] = (), seed: int = 0,
                 pad_to: int | None = None,
                 stop_ids: Sequence[Sequence[int]] = ()) -> list[Completion]:
        """One completion per prompt. `images[i]` is preprocessed pixels [H, W, 3] or None.
        `pad_to` fixes the batch size (filler rows), so a short last batch reuses the
        compiled program. `stop_ids`: token sequences that end an answer (kept in it), as
        MiniGPT-4's StoppingCriteria (`prompts.minigpt4_stop_ids`)."""
        if len(prompt_texts) != len(images):
            raise ValueError(f"{len(prompt_texts)} prompts but {len(images)} images")
        tok = self.tokenizer
        rows = [prompts.encode_prompt(p, tok, self.cfg.num_image_tokens, img is not None,
                                      self.cfg.image_token_id)
                for p, img in zip(prompt_texts, images)]
        n = len(rows)
        size = -(-max(n, pad_to or 0) // self.batch_multiple) * self.batch_multiple
        ids, mask = prompts.left_pad(rows, tok.pad_id, self.bucket, size)
        batch = {"input_ids": ids, "attention_mask": mask}
        if any(img is not None for img in images):
            pixels = np.zeros((size, *self.image_processor.blank().shape), np.float32)
            for i, img in enumerate(images):
                if img is not None:
                    pixels[i] = img
            batch["pixel_values"] = pixels
        eos_ids = self.eos_ids

        def stopped(tokens: np.ndarray) -> np.ndarray:
            rows = [prompts.generated_ids(r, eos_ids)[0] for r in tokens]
            return np.asarray([prompts.cut_at_stop(prompts.decode_text(tok, r), stop_strings)[1]
                               or prompts.cut_at_stop_ids(r, stop_ids)[1] for r in rows])

        with self._mesh_context():
            tokens = generate_tokens(
                self.params, self.cfg, self._place(batch), sampling,
                max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=tok.pad_id,
                dtype=self.dtype, key=jax.random.key(seed),
                stopped=stopped if stop_strings or stop_ids else None)
        return [self._finish(row, eos_ids, stop_strings, stop_ids) for row in tokens[:n]]

    def _finish(self, row: np.ndarray, eos_ids: tuple[int, ...], stop_strings: Sequence[str],
                stop_ids: Sequence[Sequence[int]] = ()) -> Completion:
        ids, saw_eos = prompts.generated_ids(row, eos_ids)
        ids, stopped_by_ids = prompts.cut_at_stop_ids(ids, stop_ids)
        text, ids, stopped = prompts.final_text(self.tokenizer, ids, stop_strings)
        finish = "stop" if stopped or stopped_by_ids else "eos" if saw_eos else "length"
        return Completion(text, ids, finish)

    def _place(self, batch: dict) -> dict:
        if self.mesh is None:
            return batch
        return {k: jax.device_put(v, batch_sharding(self.mesh, v.ndim)) for k, v in batch.items()}

    def _mesh_context(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()


def default_aspect(cfg) -> str:
    """Image preprocessing of a model family: MiniGPT-4's Blip2ImageEvalProcessor square resize
    (MINIGPT4.md §3.3), LLaVA-1.5 / ShareGPT4V's pad-to-square (REFERENCE.md §3.7)."""
    return "resize" if getattr(cfg, "family", None) == "minigpt4" else "pad"


def local_mesh(tensor: int = 1, devices: int | None = None) -> Mesh:
    """A mesh over this host's devices (the first `devices` of them): data parallel, optional
    tensor parallel. Each host decodes its own shard, so no collective waits on another host."""
    return make_mesh(data=-1, tensor=tensor, devices=jax.local_devices()[:devices])
