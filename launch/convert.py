"""Convert weights between Hugging Face formats and this project's sgv checkpoint (what training,
generation and the planner read).

examples:
  python launch/convert.py --from llava-hf --src llava-hf/llava-1.5-7b-hf --to sgv --dst models/llava15
  python launch/convert.py --from sgv --src runs/demo/finetune/sgv --to llava-hf --dst exports/demo-hf

every direction:
  --from llava-hf   --src HF_DIR   --to sgv --dst CKPT
  --from llava      --src LLM_DIR [--vision-tower VT_DIR] --to sgv --dst CKPT
  --from components --clip CLIP_DIR --llm LLM_DIR [--projector mm_projector.bin] --to sgv --dst CKPT
  --from sgv --src CKPT --to llava-hf --dst HF_DIR   (LlavaForConditionalGeneration + LlavaProcessor)
  --from sgv --src CKPT --to llava    --dst DIR      (LLM dir + vision_tower/, ShareGPT4V layout)
  --from minigpt4 --src DIR [--eva-vit F] [--blip2 F] [--minigpt4-ckpt F] [--vicuna DIR] --to sgv --dst CKPT
                    (DIR: eva_vit_g.pth, blip2_pretrained_flant5xxl.pth, pretrained_minigpt4.pth,
                     vicuna/, optional minigpt4.json)
  --from blip2-hf --src HF_DIR --to sgv --dst CKPT   (Blip2ForConditionalGeneration, LLaMA text model)
  --from sgv --src CKPT --to minigpt4 --dst DIR      (the four MiniGPT-4 files + minigpt4.json)
  --from sgv --src CKPT --to blip2-hf --dst HF_DIR
"""

import sys

from sgv_jax import cli
from sgv_jax.convert.cli import DTYPES, FORMATS_IN, FORMATS_OUT, run


def parse(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--from", dest="src_format", required=True, choices=FORMATS_IN,
                   help="source format")
    p.add_argument("--to", dest="dst_format", required=True, choices=FORMATS_OUT,
                   help="destination format")
    p.add_argument("--src", help="source directory (llava-hf, llava, sgv)")
    p.add_argument("--dst", required=True, help="destination directory (must not exist)")
    p.add_argument("--vision-tower", help="llava: CLIPVisionModel dir (ShareGPT4V's vision_tower/)")
    p.add_argument("--clip", help="components: CLIPModel or CLIPVisionModel dir")
    p.add_argument("--llm", help="components: LlamaForCausalLM (Vicuna) dir")
    p.add_argument("--projector", help="components: LLaVA stage-1 mm_projector.bin")
    p.add_argument("--projector-type", default="mlp2x_gelu",
                   help="components: projector shape (mlp2x_gelu: LLaVA-1.5/ShareGPT4V)")
    p.add_argument("--adapter", help="llava-hf → sgv: a PEFT LoRA folder (adapter_config.json + "
                   "adapter_model.safetensors or .bin) imported with the base")
    p.add_argument("--base", help="llava → sgv: the base model of a LLaVA LoRA folder given as --src")
    p.add_argument("--merge-lora", action="store_true",
                   help="export: fold the adapters into the weights (PEFT merge_and_unload)")
    p.add_argument("--eva-vit", help="minigpt4: eva_vit_g.pth (default: SRC/eva_vit_g.pth)")
    p.add_argument("--blip2", help="minigpt4: blip2_pretrained_flant5xxl.pth (default: in SRC)")
    p.add_argument("--minigpt4-ckpt", help="minigpt4: pretrained_minigpt4.pth, stage 1 or 2 "
                   "(default: in SRC)")
    p.add_argument("--vicuna", help="minigpt4: Vicuna v0 HF folder (default: SRC/vicuna)")
    p.add_argument("--dtype", choices=DTYPES, help="parameter dtype in the sgv checkpoint "
                   "(default: keep the source's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of a fresh projector (components without --projector) and of new "
                        "vocab rows on llava-hf export")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="export shard size in GiB")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no library warnings")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    return cli.run_guarded(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
