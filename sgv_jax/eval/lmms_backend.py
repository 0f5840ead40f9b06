"""lmms-eval backend: any lmms-eval `generate_until` task through our batched generator.

    python -m lmms_eval --model sgv_jax --model_args checkpoint=CKPT[,conv_mode=vicuna_v1,
        aspect=pad,dtype=float32,devices=N] --tasks pope,mme --batch_size 16

lmms-eval finds the model through the entry-point group `lmms_eval.models` (pyproject.toml;
lmms_eval/models/registry_v2.py `load_entrypoint_manifests`), so nothing is copied into
lmms-eval. Each request becomes LLaVA-1.5's eval prompt: `<image>\\n` before the task's text
(unless the text places `<image>` itself, as lmms-eval's `llava` model does), wrapped in the
conversation template (`vicuna_v1`, as model_vqa_loader.py), image `pad` aspect. Requests with the
same generation settings are answered in batches of `--batch_size` over all local devices
(`Generator.batch_multiple`); `until` strings stop generation where they first appear.

Not supported, with an error that says so: `loglikelihood` (lmms-eval's multiple-choice
`output_type: loglikelihood` tasks), multi-round generation, several images per question, beam
search. One process drives all local devices: run it without `accelerate launch`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from sgv_jax.constants import DEFAULT_IMAGE_TOKEN
from sgv_jax.eval import prompts
from sgv_jax.generation.generator import Generator, local_mesh
from sgv_jax.generation.sampling import GREEDY, SamplingConfig

MODEL_NAME = "sgv_jax"
DEFAULT_MAX_NEW_TOKENS = 128  # LLaVA-1.5's eval scripts' default


def manifest() -> ModelManifest:
    """The entry point (`[project.entry-points."lmms_eval.models"]` in pyproject.toml)."""
    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.SgvJax")


def sampling_of(gen_kwargs: dict) -> SamplingConfig:
    """HF-style generation kwargs of an lmms-eval task → our sampling settings (greedy unless
    `do_sample` with a temperature above 0, as HF's generate reads them)."""
    if int(gen_kwargs.get("num_beams", 1) or 1) != 1:
        raise ValueError(f"the sgv_jax model decodes greedily or by sampling, not by beam search "
                         f"(generation_kwargs num_beams={gen_kwargs['num_beams']}); set num_beams: 1")
    temperature = float(gen_kwargs.get("temperature", 0) or 0)
    if not gen_kwargs.get("do_sample", False) or temperature == 0:
        return GREEDY
    return SamplingConfig(temperature=temperature, top_p=float(gen_kwargs.get("top_p") or 1.0))


def stop_strings_of(gen_kwargs: dict) -> list[str]:
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else list(until)


def user_message(context: str, has_image: bool) -> str:
    """The first user turn: the image token first, unless the task's text already has it."""
    if has_image and DEFAULT_IMAGE_TOKEN not in context:
        return DEFAULT_IMAGE_TOKEN + "\n" + context
    return context


@register_model(MODEL_NAME)
class SgvJax(lmms):
    """An sgv checkpoint (`Generator.from_checkpoint`) behind lmms-eval's model interface."""

    def __init__(self, checkpoint: str, tokenizer: str | None = None,
                 conv_mode: str = "vicuna_v1", aspect: str = "pad", dtype: str = "float32",
                 devices: int | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, device: str | None = None) -> None:
        # `max_batch_size` and `device` are lmms-eval's own flags, passed to every model: the
        # batch is --batch_size and the devices are this host's JAX devices.
        super().__init__()
        if conv_mode not in prompts.CONV_MODES:
            raise ValueError(f"model_args conv_mode={conv_mode!r}: expected one of "
                             f"{sorted(prompts.CONV_MODES)}")
        self.conv_mode = conv_mode
        self.batch_size = int(batch_size)
        mesh = local_mesh(devices=int(devices) if devices else None)
        self.generator = Generator.from_checkpoint(checkpoint, tokenizer=tokenizer, dtype=dtype,
                                                   aspect=aspect, mesh=mesh)

    def generate_until(self, requests: Sequence[Instance]) -> list[str]:
        """Answers in request order; batches group requests with equal generation settings."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        texts: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), unit="q", desc="sgv_jax", disable=self.rank != 0)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                for i, text in zip(chunk, self._answer([requests[i] for i in chunk])):
                    texts[i] = text
                bar.update(len(chunk))
        bar.close()
        return texts

    def _answer(self, batch: Sequence[Instance]) -> list[str]:
        gen_kwargs = dict(batch[0].args[1])
        prompt_texts, pixels = [], []
        for request in batch:
            context, _, doc_to_visual, doc_id, task, split = request.args
            visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) or []
                       if v is not None]
            if len(visuals) > 1:
                raise ValueError(f"task {task!r} doc {doc_id}: {len(visuals)} images; the "
                                 "sgv_jax model takes one image per question")
            if visuals and not hasattr(visuals[0], "convert"):
                raise ValueError(f"task {task!r} doc {doc_id}: visual of type "
                                 f"{type(visuals[0]).__name__}; the sgv_jax model takes images")
            image = self.generator.preprocess(visuals[0].convert("RGB")) if visuals else None
            message = user_message(context, image is not None)
            prompt_texts.append(prompts.conversation_prompt(message, self.conv_mode))
            pixels.append(image)
        pad_to = -(-self.batch_size // self.generator.batch_multiple) * \
            self.generator.batch_multiple
        completions = self.generator.complete(
            prompt_texts, pixels, sampling_of(gen_kwargs),
            max_new_tokens=int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
            stop_strings=stop_strings_of(gen_kwargs), pad_to=pad_to)
        for request, completion in zip(batch, completions):
            self.cache_hook.add_partial("generate_until", (request.args[0], request.args[1]),
                                        completion.text)
        return [c.text for c in completions]

    def loglikelihood(self, requests: Sequence[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("the sgv_jax model answers generate_until tasks only; this "
                                  "task's output_type is loglikelihood")

    def generate_until_multi_round(self, requests: Sequence[Instance]) -> list[str]:
        raise NotImplementedError("the sgv_jax model answers single-round generate_until tasks "
                                  "only; this task is multi-round")
