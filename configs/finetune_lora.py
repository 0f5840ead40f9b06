"""ShareGPT4V stage 2 with LoRA: the ShareGPT4V-7B finetune data and template with LLaVA-1.5's
LoRA recipe (r 128, alpha 256, dropout 0.05, LoRA lr 2e-4, projector 2e-5, tower and base LLM
frozen, global batch 128, one epoch, warmup 3%, cosine; LORA.md §1.3).

    python launch/train.py --config configs/finetune_lora.py \
        --config.init_from runs/pt/sgv --workdir runs/ft_lora
"""

from configs import common
from configs.llava15_finetune_lora import apply_lora_recipe, demo_lora


def get_config(variant: str = ""):
    c = common.base()
    c.data.train_file = "data/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"
    c.data.image_folder = "data"
    c.data.template = "v1"
    c.data.aspect = "pad"
    c.per_device_batch_size = 8
    c = apply_lora_recipe(c)
    if variant == "demo":
        c = demo_lora(c, "runs/demo/pretrain/sgv")
    elif variant:
        raise ValueError(f"unknown variant {variant!r} for finetune_lora.py; known: demo")
    return c
