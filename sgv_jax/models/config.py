"""Model shapes: frozen dataclasses and presets by name (REFERENCE.md §1)."""

from __future__ import annotations

import dataclasses
from typing import Any

from sgv_jax.constants import IMAGE_TOKEN_INDEX


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """HF `CLIPVisionConfig` fields that shape the tower."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 336
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """HF `LlamaConfig` fields that shape the decoder."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_heads, as HF
    rms_norm_eps: float = 1e-5  # LLaMA-2 / Vicuna-v1.5; HF's class default is 1e-6 (§1.4)
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    pad_token_id: int = 0

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


# The seven LLaMA linears LLaVA-1.5 adapts (LORA.md §1.1): not the tower, projector or lm_head.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """PEFT's LoRA on the decoder's linears (LORA.md §1.2, §2.1): y = xW + (alpha/rank)·B(A(drop(x)))."""

    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05  # on the adapter's input only, in training
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))  # hashable after JSON lists
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"lora.targets {list(self.targets)}: choose from {LORA_TARGETS}")
        if self.rank <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"lora.rank {self.rank} must be > 0 and lora.dropout {self.dropout} "
                             "in [0, 1)")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank  # PEFT's `scaling` (no rsLoRA, LORA.md §1.2)


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """The LLaVA composition: vision tower → projector → decoder."""

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    projector_type: str = "mlp2x_gelu"  # 'linear' or 'mlp{N}x_gelu' (§1.3)
    projector_bias: bool = True
    vision_feature_layer: int = -2  # index into the 1+num_layers hidden states (§1.2)
    vision_feature_select: str = "patch"  # 'patch' drops CLS, 'cls_patch' keeps it
    image_token_id: int = IMAGE_TOKEN_INDEX  # ids at which image features are written
    lora: LoraConfig | None = None  # adapters on the decoder's linears (None: no LoRA)

    @property
    def num_image_tokens(self) -> int:
        cls = 1 if self.vision_feature_select == "cls_patch" else 0
        return self.vision.num_patches + cls

    @property
    def vision_layers_used(self) -> int:
        """How many CLIP blocks the forward pass must run to reach the selected layer."""
        n = self.vision.num_layers
        index = self.vision_feature_layer % (n + 1)  # hidden_states has n+1 entries
        return index

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VLMConfig | MiniGPT4Config:
        """The config a checkpoint's `model` dict describes; a `family` field picks the type."""
        d = dict(d)
        if d.get("family") == MiniGPT4Config.family:
            return MiniGPT4Config.from_dict(d)
        d.pop("family", None)
        vision = VisionConfig(**d.pop("vision", {}))
        text = TextConfig(**d.pop("text", {}))
        lora = d.pop("lora", None)
        return cls(vision=vision, text=text, lora=LoraConfig(**lora) if lora else None, **d)

    def replace(self, **kw: Any) -> VLMConfig:
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
    """BLIP-2's Q-Former as MiniGPT-4 keeps it: BERT-base layers with the text half deleted,
    learned query tokens, cross-attention to the image every `cross_attention_freq` layers
    (MINIGPT4.md §1.2)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    cross_attention_freq: int = 2
    num_query_tokens: int = 32
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512  # only the checkpoint's unused position_ids buffer

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def has_cross_attention(self, layer: int) -> bool:
        return layer % self.cross_attention_freq == 0  # Qformer.py l.388


@dataclasses.dataclass(frozen=True)
class MiniGPT4Config:
    """The MiniGPT-4 composition (MINIGPT4.md §1): EVA ViT-g (`vision`; its fields mean what
    they mean for CLIP) → ln_vision → Q-Former → llama_proj → Vicuna. Exposes the attributes
    the trainer, generator and planner read from a VLMConfig (`vision`, `text`,
    `num_image_tokens`, `image_token_id`)."""

    vision: VisionConfig = VisionConfig()
    qformer: QFormerConfig = QFormerConfig()
    text: TextConfig = TextConfig()
    ln_vision_eps: float = 1e-5  # torch's default, not the ViT's 1e-6 (MINIGPT4.md §1.1, §5.2)
    image_token_id: int = IMAGE_TOKEN_INDEX
    family: str = "minigpt4"

    @property
    def num_image_tokens(self) -> int:
        return self.qformer.num_query_tokens

    @property
    def vision_layers_used(self) -> int:
        return self.vision.num_layers  # the last block's output, no final norm (§1.1)

    @property
    def lora(self) -> None:
        """No LoRA adapters: MiniGPT-4 trains llama_proj only (§3.2); the trainer reads this."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MiniGPT4Config:
        d = dict(d)
        return cls(vision=VisionConfig(**d.pop("vision", {})),
                   qformer=QFormerConfig(**d.pop("qformer", {})),
                   text=TextConfig(**d.pop("text", {})), **d)

    def replace(self, **kw: Any) -> MiniGPT4Config:
        return dataclasses.replace(self, **kw)


ModelConfig = VLMConfig | MiniGPT4Config


def _validate_minigpt4(config: MiniGPT4Config) -> list[str]:
    q = config.qformer
    problems = []
    if q.hidden_size % q.num_heads:
        problems.append(f"qformer.hidden_size {q.hidden_size} not divisible by num_heads {q.num_heads}")
    if q.cross_attention_freq < 1:
        problems.append(f"qformer.cross_attention_freq must be >= 1, got {q.cross_attention_freq}")
    return problems


def validate(config: ModelConfig) -> None:
    """Reject shapes the model cannot run, naming the field."""
    v, t = config.vision, config.text
    if isinstance(config, MiniGPT4Config):
        problems = _validate_minigpt4(config)
        if v.hidden_size % v.num_heads:
            problems.append(f"vision.hidden_size {v.hidden_size} not divisible by num_heads {v.num_heads}")
        if t.num_heads % t.num_kv_heads:
            problems.append(f"text.num_heads {t.num_heads} not divisible by num_kv_heads {t.num_kv_heads}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))
        return
    problems = []
    if v.hidden_size % v.num_heads:
        problems.append(f"vision.hidden_size {v.hidden_size} not divisible by num_heads {v.num_heads}")
    if v.image_size % v.patch_size:
        problems.append(f"vision.image_size {v.image_size} not divisible by patch_size {v.patch_size}")
    if t.num_heads % t.num_kv_heads:
        problems.append(f"text.num_heads {t.num_heads} not divisible by num_kv_heads {t.num_kv_heads}")
    if not -(v.num_layers + 1) <= config.vision_feature_layer <= v.num_layers:
        problems.append(f"vision_feature_layer {config.vision_feature_layer} outside the "
                        f"{v.num_layers + 1} hidden states")
    if config.vision_feature_select not in ("patch", "cls_patch"):
        problems.append(f"vision_feature_select {config.vision_feature_select!r}: use 'patch' or 'cls_patch'")
    from sgv_jax.models.projector import (
        projector_depth,  # local: avoids an import cycle
    )

    projector_depth(config.projector_type)  # raises with the name if unknown
    if problems:
        raise ValueError("invalid model config: " + "; ".join(problems))


_CLIP_L_336 = VisionConfig()
_LLAMA2_7B = TextConfig()
_LLAMA2_13B = TextConfig(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40,
                         num_kv_heads=40)

# MiniGPT-4 (MINIGPT4.md §1): EVA ViT-g/14 at 224 (39 blocks, MLP int(1408*4.3637) = 6144,
# head_dim 88, eps 1e-6, exact GELU) + BERT-base Q-Former + Vicuna v0 (LLaMA-1: RMSNorm eps 1e-6,
# 2048 positions, vocab 32001 with FastChat's [PAD], §1.3).
_EVA_VIT_G = VisionConfig(hidden_size=1408, intermediate_size=6144, num_layers=39, num_heads=16,
                          patch_size=14, image_size=224, layer_norm_eps=1e-6, hidden_act="gelu")
_VICUNA_V0_7B = TextConfig(vocab_size=32001, rms_norm_eps=1e-6, max_position_embeddings=2048)
_VICUNA_V0_13B = dataclasses.replace(_LLAMA2_13B, vocab_size=32001, rms_norm_eps=1e-6,
                                     max_position_embeddings=2048)

PRESETS: dict[str, ModelConfig] = {
    # ShareGPT4V-7B and LLaVA-1.5-7B share shapes (§1): CLIP-L/14-336 + mlp2x_gelu + LLaMA-2-7B.
    "sharegpt4v_7b": VLMConfig(vision=_CLIP_L_336, text=_LLAMA2_7B),
    "llava15_7b": VLMConfig(vision=_CLIP_L_336, text=_LLAMA2_7B),
    "llava15_13b": VLMConfig(vision=_CLIP_L_336, text=_LLAMA2_13B),
    # LLaVA v1: CLIP-L/14 at 224 px and a linear projector.
    "llava_v1_7b": VLMConfig(vision=VisionConfig(image_size=224), text=_LLAMA2_7B,
                             projector_type="linear"),
    # Tiny shapes for tests: all different, primes where the math allows, so a swapped axis fails.
    "tiny": VLMConfig(
        vision=VisionConfig(hidden_size=24, intermediate_size=44, num_layers=3, num_heads=2,
                            patch_size=7, image_size=21),
        text=TextConfig(vocab_size=97, hidden_size=40, intermediate_size=88, num_layers=2,
                        num_heads=5, num_kv_heads=5, max_position_embeddings=256),
    ),
    # Tiny with even sizes so every axis divides a (data=2, fsdp=2, tensor=2) mesh.
    "tiny_even": VLMConfig(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
                            patch_size=7, image_size=28),
        text=TextConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_layers=2,
                        num_heads=4, num_kv_heads=2, max_position_embeddings=256),
    ),
    # The demo model: small enough to train both stages on 2 CPU cores in minutes.
    "demo": VLMConfig(
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
                            patch_size=8, image_size=32),
        text=TextConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=4,
                        num_heads=4, num_kv_heads=2, max_position_embeddings=512),
    ),
    "minigpt4_7b": MiniGPT4Config(vision=_EVA_VIT_G, text=_VICUNA_V0_7B),
    "minigpt4_13b": MiniGPT4Config(vision=_EVA_VIT_G, text=_VICUNA_V0_13B),
    # Tiny MiniGPT-4 twin: every width different so a swapped axis fails.
    "minigpt4_tiny": MiniGPT4Config(
        vision=VisionConfig(hidden_size=24, intermediate_size=44, num_layers=3, num_heads=2,
                            patch_size=7, image_size=21, layer_norm_eps=1e-6, hidden_act="gelu"),
        qformer=QFormerConfig(hidden_size=36, intermediate_size=52, num_layers=4, num_heads=3,
                              num_query_tokens=5, max_position_embeddings=16),
        text=TextConfig(vocab_size=97, hidden_size=40, intermediate_size=88, num_layers=2,
                        num_heads=5, num_kv_heads=5, rms_norm_eps=1e-6, max_position_embeddings=256),
    ),
    # The MiniGPT-4 demo model: both stages train on 2 CPU cores in minutes.
    "minigpt4_demo": MiniGPT4Config(
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
                            patch_size=8, image_size=32, layer_norm_eps=1e-6, hidden_act="gelu"),
        qformer=QFormerConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                              num_query_tokens=8, max_position_embeddings=64),
        text=TextConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=4,
                        num_heads=4, num_kv_heads=4, rms_norm_eps=1e-6, max_position_embeddings=512),
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
