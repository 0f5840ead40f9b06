"""LLaVA-1.5 stage 2 (REFERENCE.md §4.3): projector + LLM, lr 2e-5, global batch 128, v1, pad."""

from configs import common


def get_config(variant: str = ""):
    c = common.base()
    c.model = "llava15_7b"
    c.data.train_file = "data/llava_v1_5_mix665k.json"
    c.data.image_folder = "data"
    c.data.template = "v1"
    c.data.aspect = "pad"
    c.global_batch_size = 128
    c.per_device_batch_size = 16
    c.optim.lr = 2e-5
    c.trainable_modules = ("projector", "language_model")
    c.tune_vit_from_layer = -1
    if variant == "demo":
        c = common.demo(c)
        c.init_from = "runs/demo/llava15_pretrain/sgv"
        c.optim.lr = 1e-3
    elif variant:
        raise ValueError(f"unknown variant {variant!r} for llava15_finetune.py; known: demo")
    return c
