"""MiniGPT-4 stage 1 (MINIGPT4.md §3.1-§3.2, minigpt4_stage1_pretrain.yaml): image-caption
pairs from webdataset shards, no prompt, `max_txt_len 32`, `end_sym "\\n"`; only `llama_proj`
(our `projector`) trained; AdamW wd 0.05 on matrices; linear warmup from 1e-6 over 5,000 steps
to 1e-4, cosine to 8e-5; 20,000 iterations at global batch 256; blip2_image_train's crop.

    python launch/convert.py --from minigpt4 --src MINIGPT4_DIR --to sgv --dst models/minigpt4_7b
    python launch/train.py --config configs/minigpt4_pretrain.py --workdir runs/mg4_stage1 \\
        --config.init_from=models/minigpt4_7b --config.data.train_file=data/cc_sbu_dataset
    python launch/train.py --config configs/minigpt4_pretrain.py:demo --workdir runs/demo/mg4_stage1
"""

import ml_collections

from configs import common


def minigpt4_fields(stage: int, max_txt_len: int, end_sym: str) -> ml_collections.ConfigDict:
    """The `minigpt4` block: which input (stage 1 shards, stage 2 cc_sbu_align) and the
    original model args; `prompts_file` empty = the embedded prompts/alignment.txt lines."""
    m = ml_collections.ConfigDict()
    m.stage = stage
    m.max_txt_len = max_txt_len
    m.end_sym = end_sym
    m.prompts_file = ""
    return m


def minigpt4_optim(c, lr: float, min_lr: float, warmup_steps: int) -> None:
    """linear_warmup_cosine_lr + AdamW(0.9, 0.999), wd 0.05 on >= 2-D non-norm weights (§3.2)."""
    c.optim.schedule = "linear_warmup_cosine"
    c.optim.lr = lr
    c.optim.min_lr = min_lr
    c.optim.warmup_lr = 1e-6
    c.optim.warmup_steps = warmup_steps
    c.optim.weight_decay = 0.05
    c.optim.decay_matrices_only = True
    c.optim.b1, c.optim.b2 = 0.9, 0.999


def get_config(variant: str = ""):
    c = common.base()
    c.model = "minigpt4_7b"
    c.data.train_file = "data/cc_sbu_dataset"  # a folder (or glob) of img2dataset .tar shards
    c.data.image_folder = ""
    c.data.aspect = "random_resized_crop"  # blip2_image_train (§3.3)
    c.data.max_length = 65  # BOS + 32 query tokens + max_txt_len 32
    c.minigpt4 = minigpt4_fields(stage=1, max_txt_len=32, end_sym="\n")
    c.total_steps = 20_000  # max_epoch 4 x iters_per_epoch 5000
    c.global_batch_size = 256  # 64 per GPU x 4 A100
    c.per_device_batch_size = 32
    minigpt4_optim(c, lr=1e-4, min_lr=8e-5, warmup_steps=5000)
    c.trainable_modules = ("projector",)  # llama_proj only
    c.tune_vit_from_layer = -1
    c.freeze_pad_row = False  # the embedding table is frozen anyway
    if variant == "demo":
        c = common.demo(c)
        c.model = "minigpt4_demo"
        # The demo's Vicuna is random: with llama_proj alone the loss barely moves (5.5 -> 5.3
        # in 300 steps), so the demo also trains the decoder. The recipe above trains
        # llama_proj only (tests/test_minigpt4_train.py checks both).
        c.trainable_modules = ("projector", "language_model")
        c.data.aspect = "resize"  # the demo's captions name the quadrant: a crop would move it
        c.data.max_length = 41  # BOS + 8 query tokens + 32
        c.total_steps = 300
        c.global_batch_size = c.per_device_batch_size = 32
        minigpt4_optim(c, lr=3e-3, min_lr=3e-4, warmup_steps=20)
        c.checkpoint_every = 100
    elif variant:
        raise ValueError(f"unknown variant {variant!r} for minigpt4_pretrain.py; known: demo")
    return c
