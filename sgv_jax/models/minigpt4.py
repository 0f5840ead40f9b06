"""MiniGPT-4 (MINIGPT4.md §1): EVA ViT-g → ln_vision → Q-Former → llama_proj, spliced into the
Vicuna prompt embeddings at the image positions.

`MiniGPT4Model` has the surface of `LlavaModel` (`embed_inputs`, `hidden_states`, `__call__`,
`loss_terms`, `language_model`) and inherits everything after the image encoding, so training,
generation, serving and the planner run it unchanged. The batch is the LLaVA batch: the
prompt's `<ImageHere>` becomes `num_query_tokens` image positions (the data and prompt code
place them mid-prompt, §2.2), written here with the projected query outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sgv_jax.models.config import MiniGPT4Config
from sgv_jax.models.eva_vit import EvaVisionTower
from sgv_jax.models.llama import LlamaModel
from sgv_jax.models.llava import LlavaModel, image_positions, splice_image_embeddings
from sgv_jax.models.projector import Projector
from sgv_jax.models.qformer import QFormer


class MiniGPT4Model(LlavaModel):
    def __init__(self, cfg: MiniGPT4Config, rngs: nnx.Rngs):  # not super().__init__: that builds CLIP
        self.cfg = cfg
        v, q = cfg.vision, cfg.qformer
        self.vision_tower = EvaVisionTower(v, cfg.ln_vision_eps, rngs)
        self.qformer = QFormer(q, v.hidden_size, rngs)
        # `llama_proj = nn.Linear(768, H)` (minigpt4.py l.67-75): the 'linear' projector, so
        # stages train it as `projector` like LLaVA's.
        self.projector = Projector("linear", q.hidden_size, cfg.text.hidden_size, True, rngs)
        self.language_model = LlamaModel(cfg.text, rngs)

    def select_vision_features(self, pixel_values: jax.Array, remat: str = "none",
                               no_grad_below: int = 0) -> jax.Array:
        """`ln_vision(visual_encoder(image))`: all 1+P tokens. [B, 1+P, D_vis]"""
        hidden = self.vision_tower(pixel_values, remat=remat, no_grad_below=no_grad_below)
        # base_model.py l.237: ln_vision runs in fp32 and casts back.
        return self.vision_tower.ln_vision(hidden.astype(jnp.float32)).astype(hidden.dtype)

    def encode_image(self, pixel_values: jax.Array, remat: str = "none", no_grad_below: int = 0,
                     out: dict | None = None) -> jax.Array:
        """`encode_img` (minigpt4.py l.120-147): [B, H, W, 3] → [B, Q, D]."""
        image = self.select_vision_features(pixel_values, remat, no_grad_below)
        query_output = self.qformer(image)
        projected = self.projector(query_output)
        if out is not None:
            out["img/features"], out["img/qformer"], out["img/projected"] = image, query_output, projected
        return projected

    def embed_inputs(self, batch: dict, dtype, remat: str = "none", no_grad_below: int = 0,
                     out: dict | None = None) -> jax.Array:
        """Token embeddings with the projected query outputs spliced in. [B, L, D]"""
        ids = batch["input_ids"]
        is_image = image_positions(ids, self.cfg)
        embeds = self.language_model.embed(jnp.where(is_image, 0, ids), dtype)
        if batch.get("pixel_values") is None:
            return embeds
        feats = self.encode_image(batch["pixel_values"].astype(dtype), remat, no_grad_below, out)
        return splice_image_embeddings(embeds, feats, is_image)
