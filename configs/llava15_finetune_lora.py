"""LLaVA-1.5 stage 2 with LoRA, as `scripts/v1_5/finetune_lora.sh` (LORA.md §1.2–1.3, §3):
adapters r 128, alpha 256, dropout 0.05 on the seven LLaMA linears at lr 2e-4; the projector
trained whole at 2e-5 (`mm_projector_lr`); tower and base LLM frozen; global batch 128, one
epoch, warmup 3%, cosine. Start from Vicuna-v1.5 + the stage-1 projector (an sgv checkpoint).

    python launch/train.py --config configs/llava15_finetune_lora.py \
        --config.init_from runs/llava15_pt/sgv --workdir runs/llava15_lora
"""

from configs import common


def apply_lora_recipe(c):
    """The LoRA fields finetune_lora.sh sets (shared with finetune_lora.py)."""
    c.lora.rank = 128
    c.lora.alpha = 256.0
    c.lora.dropout = 0.05
    c.optim.lr = 2e-4
    c.optim.projector_lr = 2e-5
    c.optim.weight_decay = 0.0
    c.optim.warmup_ratio = 0.03
    c.num_epochs = 1
    c.global_batch_size = 128
    c.trainable_modules = ("projector", "adapters")
    c.tune_vit_from_layer = -1
    return c


def demo_lora(c, init_from: str):
    """The embedded demo with LoRA: learns on the synthetic data in CPU minutes."""
    c = common.demo(c)
    c.init_from = init_from
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.optim.lr = 5e-3
    c.optim.projector_lr = 2e-3
    c.data.max_length = 96  # system prompt + 16 image positions + three QA turns
    c.num_epochs = 4
    # Deviation, demo only: the demo's base is its own stage 1, whose `plain` template never
    # ends a target with </s>, so unlike Vicuna it has never predicted end-of-sequence; with
    # LLaVA's set (lm_head frozen) the adapters could not learn it and the loss stayed at 1.47
    # (from 5.22), one hard </s> per short answer. Training lm_head too lets the demo learn.
    c.trainable_modules = ("projector", "adapters", "language_model/lm_head")
    return c


def get_config(variant: str = ""):
    c = common.base()
    c.model = "llava15_7b"
    c.data.train_file = "data/llava_v1_5_mix665k.json"
    c.data.image_folder = "data"
    c.data.template = "v1"
    c.data.aspect = "pad"
    c.per_device_batch_size = 16
    c = apply_lora_recipe(c)
    if variant == "demo":
        c = demo_lora(c, "runs/demo/llava15_pretrain/sgv")
    elif variant:
        raise ValueError(f"unknown variant {variant!r} for llava15_finetune_lora.py; known: demo")
    return c
