"""ShareGPT4V-7B stage 1 (REFERENCE.md §4.1): plain template, square images, CLIP blocks >= 12 +
projector + whole LLM trained at lr 2e-5, global batch 256, 1 epoch, cosine with 3% warmup.

    python launch/train.py --config configs/pretrain.py --workdir runs/pt
    python launch/train.py --config configs/pretrain.py:demo --workdir runs/demo/pretrain
"""

from configs import common


def get_config(variant: str = ""):
    c = common.base()
    c.data.train_file = "data/sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json"
    c.data.image_folder = "data"
    c.data.template = "plain"
    c.data.aspect = "square"
    c.global_batch_size = 256
    c.per_device_batch_size = 16
    c.optim.lr = 2e-5
    c.trainable_modules = ("projector", "language_model")
    c.tune_vit_from_layer = 12
    # Each decoder layer's saved input waits in host memory: 8.6 GB per device at 16 samples of
    # 2048 tokens, which is what lets 16/chip fit a 32 GB v4 (the planner: 15.5 GB with it, 26.2
    # without). demo() sets "none" for CPUs.
    c.remat = "full_offload"
    if variant == "demo":
        c = common.demo(c)
        c.tune_vit_from_layer = 2  # the demo tower has 4 blocks: train the second half
        c.optim.lr = 3e-3
        c.global_batch_size = c.per_device_batch_size = 64
        c.data.max_length = 32  # 16 image positions + a caption
        c.num_epochs = 12  # ~560 steps of 64 captions: shapes need the longest
    elif variant:
        raise ValueError(f"unknown variant {variant!r} for pretrain.py; known: demo")
    return c
