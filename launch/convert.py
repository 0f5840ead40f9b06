"""Convert weights between HF formats and this project's `sgv` checkpoint (issue 3).

  --from llava-hf   --src HF_DIR   --to sgv --dst CKPT
  --from llava      --src LLM_DIR [--vision-tower VT_DIR] --to sgv --dst CKPT
  --from components --clip CLIP_DIR --llm LLM_DIR [--projector mm_projector.bin] --to sgv --dst CKPT
  --from sgv --src CKPT --to llava-hf --dst HF_DIR
  --from sgv --src CKPT --to llava    --dst DIR      (LLM dir + vision_tower/, ShareGPT4V layout)
"""

from __future__ import annotations

import argparse
import sys

from sgv_jax.convert.cli import DTYPES, FORMATS_IN, FORMATS_OUT, run


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--from", dest="src_format", required=True, choices=FORMATS_IN)
    p.add_argument("--to", dest="dst_format", required=True, choices=FORMATS_OUT)
    p.add_argument("--src", help="source directory (llava-hf, llava, sgv)")
    p.add_argument("--dst", required=True, help="destination directory (must not exist)")
    p.add_argument("--vision-tower", help="llava: CLIPVisionModel dir (ShareGPT4V's vision_tower/)")
    p.add_argument("--clip", help="components: CLIPModel or CLIPVisionModel dir")
    p.add_argument("--llm", help="components: LlamaForCausalLM (Vicuna) dir")
    p.add_argument("--projector", help="components: LLaVA stage-1 mm_projector.bin")
    p.add_argument("--projector-type", default="mlp2x_gelu",
                   help="components: projector shape (default mlp2x_gelu, LLaVA-1.5/ShareGPT4V)")
    p.add_argument("--dtype", choices=DTYPES, help="parameter dtype in the sgv checkpoint "
                   "(default: keep the source's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of a fresh projector (components without --projector) and of new "
                        "vocab rows on llava-hf export")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="export shard size")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse()))
