"""ShareGPT4V-7B stage 2 (REFERENCE.md §4.2): v1 template, pad images, CLIP frozen, projector +
LLM at lr 2e-5, global batch 128, initialised from stage 1's output.

    python launch/train.py --config configs/finetune.py --config.init_from runs/pt/sgv --workdir runs/ft
"""

from configs import common


def get_config(variant: str = ""):
    c = common.base()
    c.data.train_file = "data/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"
    c.data.image_folder = "data"
    c.data.template = "v1"
    c.data.aspect = "pad"
    c.global_batch_size = 128
    c.per_device_batch_size = 8
    c.optim.lr = 2e-5
    c.trainable_modules = ("projector", "language_model")
    c.tune_vit_from_layer = -1
    if variant == "demo":
        c = common.demo(c)
        c.init_from = "runs/demo/pretrain/sgv"
        c.optim.lr = 1e-3
        c.data.max_length = 96  # system prompt + 16 image positions + three QA turns
        c.num_epochs = 4
    elif variant:
        raise ValueError(f"unknown variant {variant!r} for finetune.py; known: demo")
    return c
