"""Constants shared by the data pipeline, the model and the converters.

Values are those of the reference implementations (REFERENCE.md §1.6, §3.1).
"""

# Label value the loss ignores (PyTorch CrossEntropyLoss default, LLaVA's IGNORE_INDEX).
IGNORE_INDEX = -100

# Placeholder id the reference puts in `input_ids` for one `<image>` (LLaVA's IMAGE_TOKEN_INDEX).
# Our pipeline expands it to one placeholder per image position; the model writes the projected
# image features at every position holding the model config's `image_token_id` (default this).
IMAGE_TOKEN_INDEX = -200

DEFAULT_IMAGE_TOKEN = "<image>"

# CLIP normalisation (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, REFERENCE §3.7).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# LLaMA / Vicuna special tokens (REFERENCE §3.1): pad = unk.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
