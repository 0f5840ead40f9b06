"""MiniGPT-4 stage 2 (MINIGPT4.md §3.1-§3.2, minigpt4_stage2_finetune.yaml): cc_sbu_align
(`filter_cap.json` + `image/`), an instruction of prompts/alignment.txt in
`###Human: {} ###Assistant: `, `max_txt_len 160`, `end_sym "###"`; only `llama_proj` trained,
from stage 1's; 1,000 iterations at batch 12, 3e-5 → 1e-5 (warmup 200 steps from 1e-6).

    python launch/train.py --config configs/minigpt4_finetune.py --workdir runs/mg4_stage2 \\
        --config.init_from=runs/mg4_stage1/sgv
    python launch/train.py --config configs/minigpt4_finetune.py:demo --workdir runs/demo/mg4_stage2
"""

from configs import common
from configs.minigpt4_pretrain import minigpt4_fields, minigpt4_optim


def get_config(variant: str = ""):
    c = common.base()
    c.model = "minigpt4_7b"
    c.data.train_file = "data/cc_sbu_align/filter_cap.json"
    c.data.image_folder = "data/cc_sbu_align/image"
    c.data.aspect = "random_resized_crop"  # blip2_image_train (§3.3)
    c.data.max_length = 256  # BOS + ~25 prompt tokens + 32 query tokens + max_txt_len 160
    c.minigpt4 = minigpt4_fields(stage=2, max_txt_len=160, end_sym="###")
    c.total_steps = 1000  # max_epoch 5 x iters_per_epoch 200
    c.global_batch_size = 12  # one A100
    c.per_device_batch_size = 12
    c.mesh.fsdp = 1
    minigpt4_optim(c, lr=3e-5, min_lr=1e-5, warmup_steps=200)
    c.trainable_modules = ("projector",)  # llama_proj only
    c.tune_vit_from_layer = -1
    c.freeze_pad_row = False
    if variant == "demo":
        c = common.demo(c)
        c.model = "minigpt4_demo"
        # The demo's Vicuna is random: with llama_proj alone the loss barely moves (5.5 -> 5.3
        # in 300 steps), so the demo also trains the decoder. The recipe above trains
        # llama_proj only (tests/test_minigpt4_train.py checks both).
        c.trainable_modules = ("projector", "language_model")
        c.data.aspect = "resize"  # the demo's captions name the quadrant: a crop would move it
        c.data.max_length = 84  # BOS + 35 prompt tokens (demo tokenizer) + 8 image + 40
        c.minigpt4.max_txt_len = 40
        c.total_steps = 150
        c.global_batch_size = c.per_device_batch_size = 16
        minigpt4_optim(c, lr=3e-3, min_lr=3e-4, warmup_steps=10)
        c.checkpoint_every = 50
    elif variant:
        raise ValueError(f"unknown variant {variant!r} for minigpt4_finetune.py; known: demo")
    return c
