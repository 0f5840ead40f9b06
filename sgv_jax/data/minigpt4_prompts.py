"""MiniGPT-4's prompts, exactly as the original builds them (MINIGPT4.md §2, §3.1).

Pure string functions: the demo prompt (`minigpt4`: the current Vicuna-v0 `Chat` template with
its system text and the trailing space after `Assistant: `; `minigpt4_2304`: the first release,
no trailing space), the training instruction template, the split at `<ImageHere>` (each segment
tokenized separately, BOS only on the first, §2.2) and `Chat.answer`'s cut of the output.
"""

from __future__ import annotations

IMAGE_HERE = "<ImageHere>"
IMAGE_PLACEHOLDER = "<Img><ImageHere></Img>"  # Chat.upload_img's Human message
SYSTEM = ("Give the following image: <Img>ImageContent</Img>. "
          "You will be able to see the image once I provide it to you. Please answer my questions.")
SEP = "###"
# conversation.py CONV_VISION_Vicuna0 (current) and the 2023-04 first release (MINIGPT4.md §2.1).
ROLES = {"minigpt4": ("Human: ", "Assistant: "), "minigpt4_2304": ("Human: ", "Assistant:")}
# Training: prompt_template of minigpt4_stage2_finetune.yaml / eval config (§3.1).
TRAIN_TEMPLATE = "###Human: {} ###Assistant: "
# `StoppingCriteriaSub(stops=[[835], [2277, 29937]])` (demo.py, §2.3): "###" as LLaMA's vocab
# encodes it ("'###' can be encoded in two different ways", conversation.py), the pieces
# `▁###` = 835 and `##` `#` = 2277 29937. Generation looks the pieces up in the checkpoint's
# tokenizer.
STOP_PIECES = (("\u2581###",), ("##", "#"))
# Chat.answer_prepare keeps at most this many embeddings (§2.2).
MAX_CONTEXT = 2000


def demo_prompt(turns: list[tuple[str, str | None]], template: str = "minigpt4",
                has_image: bool = True) -> str:
    """`Conversation.get_prompt` (SINGLE) for an image chat: `turns` = [(question, answer or
    None)], the image placed in the first Human message as `Chat.upload_img` + `Chat.ask` do
    (joined with ' '). The last answer None leaves the prompt open for the assistant. Without
    an image the first Human message is the question alone (the demo always has one)."""
    if template not in ROLES:
        raise ValueError(f"unknown MiniGPT-4 template {template!r}; expected one of {sorted(ROLES)}")
    user, assistant = ROLES[template]
    messages: list[tuple[str, str | None]] = []
    for i, (question, answer) in enumerate(turns):
        first = i == 0 and has_image
        messages.append((user, f"{IMAGE_PLACEHOLDER} {question}" if first else question))
        messages.append((assistant, answer))
    if template == "minigpt4_2304":  # get_prompt added ": " itself; roles had no colon
        out = SYSTEM + SEP
        for role, message in messages:
            name = role.rstrip(": ")
            out += f"{name}: {message}{SEP}" if message else f"{name}:"
        return out
    out = SYSTEM + SEP
    for role, message in messages:
        out += role + message + SEP if message else role
    return out


def train_prompt(instruction: str) -> str:
    """Stage-2 instruction (a line of prompts/alignment.txt) in the training template."""
    return TRAIN_TEMPLATE.format(instruction)


def split_at_image(prompt: str) -> list[str]:
    """`prompt.split('<ImageHere>')`: segments between images (get_context_emb, §2.2)."""
    return prompt.split(IMAGE_HERE)


def segment_ids(prompt: str, encode, bos_id: int, image_id: int, num_image_tokens: int
                ) -> list[int]:
    """Ids with `num_image_tokens` image positions per `<ImageHere>`: each segment encoded on
    its own (`encode(text) -> ids` with sentencepiece's dummy prefix), BOS before the first."""
    ids: list[int] = [bos_id]
    segments = split_at_image(prompt)
    for i, segment in enumerate(segments):
        ids += list(encode(segment))
        if i < len(segments) - 1:
            ids += [image_id] * num_image_tokens
    return ids


def cut_answer(text: str) -> str:
    """`Chat.answer`'s post-processing: `split('###')[0].split('Assistant:')[-1].strip()`
    (the leading <unk>/<s> ids are stripped before decoding, §2.3)."""
    return text.split(SEP)[0].split("Assistant:")[-1].strip()
