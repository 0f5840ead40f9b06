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
    def from_dict(cls, d: dict[str, Any]) -> VLMConfig:
        d = dict(d)
        vision = VisionConfig(**d.pop("vision", {}))
        text = TextConfig(**d.pop("text", {}))
        lora = d.pop("lora", None)
        return cls(vision=vision, text=text, lora=LoraConfig(**lora) if lora else None, **d)

    def replace(self, **kw: Any) -> VLMConfig:
        return dataclasses.replace(self, **kw)


def validate(config: VLMConfig) -> None:
    """Reject shapes the model cannot run, naming the field."""
    v, t = config.vision, config.text
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

PRESETS: dict[str, VLMConfig] = {
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
}


def get_preset(name: str) -> VLMConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
