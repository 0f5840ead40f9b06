"""LLaVA-1.5 stage 1 (REFERENCE.md §4.3): projector only, lr 1e-3, global batch 256, plain."""

from configs import common


def get_config(variant: str = ""):
    c = common.base()
    c.model = "llava15_7b"
    c.data.train_file = "data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
    c.data.image_folder = "data/LLaVA-Pretrain/images"
    c.data.template = "plain"
    c.data.aspect = "square"
    c.global_batch_size = 256
    c.per_device_batch_size = 32
    c.optim.lr = 1e-3
    c.trainable_modules = ("projector",)
    c.tune_vit_from_layer = -1
    if variant == "demo":
        c = common.demo(c)
        c.optim.lr = 3e-3
    elif variant:
        raise ValueError(f"unknown variant {variant!r} for llava15_pretrain.py; known: demo")
    return c
