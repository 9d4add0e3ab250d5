"""The user-facing model object: load a checkpoint, encode a CT once, answer and stream questions.

A chat about one scan asks many questions of the same image, so the work that depends only on the
image is done once per volume and kept (`prepare`): the preprocessing, the vision encoder, and the
language model's KV cache of BOS + image tokens (the part of every prompt before the question).
A question then costs only its own tokens. Closed questions are also scored by likelihood of each
`"{letter}. {choice}"`, a cheaper and steadier read-out than parsing generated text.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xxhash

from model.ct.modality import require_ct
from model.ct.preprocess import InputGeometry, masks_to_input, slice_input_with_crop, to_model_input_with_crop
from model.ct.rois import rois_for
from model.inference import boxes, prompts
from model.inference.asked import question_view
from model.inference.devices import describe
from model.inference.generation_thread import GenerationThread
from model.inference.kv_cache import growing_copy, prefix_copy
from model.inference.locate import located_answer, located_finding
from model.inference.quantize import is_quantized

DEFAULT_SETTINGS: dict[str, Any] = {"prompt_style": "m3d", "window": None}
_HASH_LIMIT_BYTES = 64 * 1024**2
_SAMPLING_KEYS = {"do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "num_beams", "min_new_tokens"}


@dataclass(frozen=True)
class Answer:
    """One generated answer, with what the chat panel and evaluation need besides the text."""

    text: str
    choice: str | None = None
    choice_scores: dict[str, float] | None = None
    box: tuple[float, ...] | None = None  # voxel coords (z1, y1, x1, z2, y2, x2) of the original volume
    box_normalized: tuple[float, ...] | None = None  # as the model wrote it, 0-1 over the model input
    n_tokens: int = 0
    latency_first_token_s: float | None = None
    total_s: float = 0.0
    token_ids: tuple[int, ...] = ()  # the generated ids, special tokens included (for fidelity checks)


@dataclass
class PreparedImage:
    """Everything about one volume (or one of its axial slices) a question can reuse: the model
    input, its geometry (None for a tensor given directly), the projected image features (as many
    as the encoder gives: global plus organ tokens) and, once built, the LM prefix cache."""

    key: str
    pixels: torch.Tensor  # (1, 1, D, H, W) in [0, 1]; D = 1 for a slice
    features: torch.Tensor  # (1, N, H)
    geometry: InputGeometry | None
    prefix_cache: Any = field(default=None, repr=False)
    slice_index: int | None = None  # the axial slice asked about; None = the whole scan
    organ_masks: torch.Tensor | None = None  # (1, organs, D, H, W) on the input grid (OmniCT family)
    boxes: dict[str, tuple[float, ...]] | None = None  # the box head's box per located finding (whole scans)
    views: dict[str | None, PreparedImage] | None = field(default_factory=dict, repr=False)  # inference.asked

    @property
    def num_tokens(self) -> int:
        """Image placeholders a prompt about this image needs."""
        return int(self.features.shape[1])


class _CancelCriteria:
    """Stops `generate` at the next token once the event is set (napari's worker.quit cannot)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.steps = 0  # tokens generated so far (the criteria run once per step)
        self.first_token_at: float | None = None  # perf_counter() when the first token existed

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self.steps += 1
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class VLM:
    """A loaded model plus its tokenizer and settings (`ctvqa.json`); `model` is the torch module."""

    def __init__(self, model: Any, tokenizer: Any, settings: dict[str, Any] | None = None,
                 name: str | None = None, cache_size: int = 4) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.name = name or str(getattr(model, "name_or_path", "") or "model")
        self.cache_size = cache_size
        self._cache: OrderedDict[str, PreparedImage] = OrderedDict()
        self._rois: OrderedDict[str, tuple[Any, dict[str, np.ndarray]]] = OrderedDict()  # volume key -> (ref, masks)
        self._objects: dict[int, tuple[weakref.ref, str]] = {}
        self._cancel = threading.Event()
        self._criteria = _CancelCriteria(self._cancel)
        self._lock = threading.RLock()  # guards the cache, which the GUI thread and a worker share
        self._generating = threading.Lock()  # one generation at a time (the cancel event is shared)
        self._generator = GenerationThread()
        self.image_token_id = self._token_id(prompts.IMAGE_TOKEN)
        if tokenizer.bos_token_id is None:
            raise ValueError("the tokenizer has no BOS token; LaMed prompts start with BOS (position 0)")

    # ----- settings and prompts -------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.model.config.image_size)  # type: ignore[return-value]

    @property
    def num_image_tokens(self) -> int:
        return int(self.model.config.num_image_tokens)

    @property
    def supports_slices(self) -> bool:
        """Whether this model answers about one axial slice (OmniCT family) as well as whole scans."""
        return bool(getattr(self.model, "supports_slices", False))

    @property
    def organ_names(self) -> list[str]:
        """The organs whose masks the encoder turns into organ tokens (none for the M3D family)."""
        config = self.model.config
        return list(config.organ_names) if getattr(config, "vision_family", "m3d") == "omnict" else []

    @property
    def prompt_style(self) -> str:
        return str(self.settings.get("prompt_style", "m3d"))

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token!r} token (a LaMed tokenizer adds it)")
        return int(token_id)

    def build_prompt(self, question: str, choices: Sequence[str] | None = None,
                     priors: Sequence[int] | None = None, prior_label: str | None = None) -> str:
        """The text after the image tokens, in this model's prompt style (priors folded in for task 6)."""
        if priors is not None and len(priors):
            question = prompts.with_priors(question, prior_label or "the finding", priors)
        return prompts.format_prompt(question, choices, style=self.prompt_style)

    def prompt_ids(self, prompt: str, num_image_tokens: int | None = None) -> torch.Tensor:
        """(1, L) ids of BOS + image placeholders (default: a whole volume's count) + " " + prompt;
        checks the placeholders survived tokenizing."""
        n = self.num_image_tokens if num_image_tokens is None else int(num_image_tokens)
        text = prompts.build_input_text(prompt, n)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = [self.tokenizer.bos_token_id, *ids]
        if len(ids) < n + 2 or any(i != self.image_token_id for i in ids[1 : n + 1]):
            raise ValueError(f"tokenizing the prompt did not give {n} {prompts.IMAGE_TOKEN} tokens after BOS")
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def runtime(self) -> str:
        """Where and how it runs, e.g. `cpu, bfloat16, int8 weights` (shown beside the model's name)."""
        return describe(self.device, self.dtype, "int8" if is_quantized(self.model) else "none")

    # ----- images --------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, organ_masks: torch.Tensor | None = None) -> torch.Tensor:
        """(B,1,D,H,W) or (1,D,H,W) model inputs (D = 1: one slice, OmniCT family) to (B, N, H)
        projected image features (not cached); `organ_masks` (B, organs, D, H, W) on the input grid."""
        if images.ndim == 4:
            images = images[None]
        if images.ndim != 5 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, D, H, W), got {tuple(images.shape)}")
        shape = tuple(images.shape[2:])
        if shape != self.image_size and not (self.supports_slices and shape == (1, *self.image_size[1:])):
            raise ValueError(f"this model takes {self.image_size} inputs, got {shape}")
        with torch.inference_mode():
            return self.model.encode_images(images, organ_masks) if organ_masks is not None \
                else self.model.encode_images(images)

    def _key(self, volume: Any, window: Any) -> tuple[str, bool]:
        """A cache key: the content hash of small tensors/arrays (model inputs); object identity for
        CT volumes and large arrays, since hashing 300 MB per question would cost more than it saves."""
        data = getattr(volume, "array", volume)
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        if hasattr(data, "__array_interface__") and data.nbytes <= _HASH_LIMIT_BYTES:
            digest = xxhash.xxh3_128_hexdigest(memoryview(np.ascontiguousarray(data)))
            normalised = bool((getattr(volume, "meta", None) or {}).get("normalised", False))
            return f"data:{digest}:{data.shape}:{normalised}:{window}", False
        return f"obj:{id(volume)}:{window}", True

    def prepare(self, volume_or_tensor: Any, window: Any = None, slice_index: int | None = None,
                rois: dict[str, np.ndarray] | None = None, allow_non_ct: bool | None = None) -> PreparedImage:
        """Preprocess and encode a volume (or its axial slice `slice_index`) once; later calls with
        the same volume return the cached result.

        Accepts a CTVolume or HU array (preprocessed here), a ready model input tensor (1,D,H,W) or
        (1,1,D,H,W) in [0, 1] (a slice index then counts its depth), or a PreparedImage (returned
        as is). OmniCT-family models also need organ masks: `rois` (organ -> bool mask in the
        volume's grid, e.g. from `model.ct.rois.read_roi_labels`), the rest found by `find_rois`.
        A volume of another modality than CT raises `NotCTError` unless `allow_non_ct` (else env
        CTVQA_ALLOW_NON_CT) says so."""
        if isinstance(volume_or_tensor, PreparedImage):
            if slice_index is not None and slice_index != volume_or_tensor.slice_index:
                raise ValueError(f"this prepared image is about slice {volume_or_tensor.slice_index}, not {slice_index}")
            return volume_or_tensor
        if slice_index is not None and not self.supports_slices:
            raise ValueError("this model (M3D family) answers about whole scans only; a question about one "
                             "slice needs an OmniCT-family model")
        require_ct(volume_or_tensor, allow_non_ct)
        window = window if window is not None else self.settings.get("window")
        with self._lock:
            volume_key, by_identity = self._key(volume_or_tensor, window)
            key = f"{volume_key}:slice={slice_index}:rois={id(rois) if rois is not None else None}"
            if by_identity:
                known = self._objects.get(id(volume_or_tensor))
                if known is None or known[0]() is not volume_or_tensor:
                    self._cache.pop(key, None)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        pixels, geometry = self._model_input(volume_or_tensor, window, slice_index)
        masks = None
        if self.organ_names and geometry is not None:
            organs = self._organ_masks(volume_key, volume_or_tensor, rois)
            masks = masks_to_input([organs[n] for n in self.organ_names], geometry)[None]
        features, located = self._encode_prepared(pixels, masks, slice_index)
        prepared = PreparedImage(key=key, pixels=pixels, features=features, geometry=geometry,
                                 slice_index=slice_index, organ_masks=masks, boxes=located)
        with self._lock:
            if by_identity:
                try:
                    self._objects[id(volume_or_tensor)] = (weakref.ref(volume_or_tensor), key)
                except TypeError:  # identity cannot be tracked safely: do not cache
                    return prepared
            self._cache[key] = prepared
            while len(self._cache) > self.cache_size:
                evicted, _ = self._cache.popitem(last=False)
                self._objects = {k: v for k, v in self._objects.items() if v[1] != evicted}
        return prepared

    def _encode_prepared(self, pixels: torch.Tensor, masks: torch.Tensor | None,
                         slice_index: int | None) -> tuple[torch.Tensor, dict[str, tuple[float, ...]] | None]:
        """The image features, and for a whole scan and a model with a box head its boxes from the
        same pass of the tower (None otherwise: `locate.located_answer` then finds them itself)."""
        if masks is not None or slice_index is not None or not getattr(self.model.config, "vision_box_findings", None):
            return self.encode(pixels, masks), None
        with torch.inference_mode():
            return self.model.encode_images_and_boxes(pixels)

    def _organ_masks(self, volume_key: str, volume: Any, rois: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """The organ masks of a volume in its own grid, found once per volume (every slice reuses them)."""
        if rois is not None:
            return rois_for(volume, self.organ_names, rois)
        with self._lock:
            ref, found = self._rois.get(volume_key, (None, None))
            if found is not None and (ref is None or ref() is volume):  # an identity key must be the same object
                return found
        found = rois_for(volume, self.organ_names)
        try:
            ref = weakref.ref(volume) if volume_key.startswith("obj:") else None
        except TypeError:  # identity cannot be tracked: do not keep the masks
            return found
        with self._lock:
            self._rois[volume_key] = (ref, found)
            while len(self._rois) > self.cache_size:
                self._rois.popitem(last=False)
        return found

    def _model_input(self, volume: Any, window: Any, slice_index: int | None) -> tuple[torch.Tensor, InputGeometry | None]:
        if isinstance(volume, torch.Tensor) and volume.ndim in (4, 5) and volume.shape[-3:] == self.image_size:
            pixels = volume.reshape(1, 1, *self.image_size).float()
            if pixels.min() < 0 or pixels.max() > 1:
                raise ValueError("a model input tensor must hold values in [0, 1]; pass the CT volume instead")
            if slice_index is not None:
                if not -self.image_size[0] <= slice_index < self.image_size[0]:
                    raise ValueError(f"slice {slice_index} is outside this input (depth {self.image_size[0]})")
                z = slice_index % self.image_size[0]
                pixels = pixels[:, :, z : z + 1]
            return pixels, None
        if slice_index is not None:
            tensor, geometry = slice_input_with_crop(volume, slice_index, self.image_size[1:], window)
        else:
            tensor, geometry = to_model_input_with_crop(volume, size=self.image_size, window=window)
        return tensor[None], geometry

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._objects.clear()
            self._rois.clear()

    @property
    def cached_keys(self) -> list[str]:
        return list(self._cache)

    def prefix_cache(self, prepared: PreparedImage) -> Any:
        """KV cache of BOS + image tokens, shared by every question about this volume."""
        prepared = question_view(self.model, prepared, "")  # a scan of an asked-finding model: its "none" view
        if prepared.prefix_cache is None:
            n = prepared.num_tokens
            ids = torch.tensor([[self.tokenizer.bos_token_id] + [self.image_token_id] * n], device=self.device)
            with torch.inference_mode():
                out = self.model(input_ids=ids, image_features=prepared.features, use_cache=True)
            prepared.prefix_cache = out.past_key_values
        return prepared.prefix_cache

    def _prompt_cache(self, prepared: PreparedImage, ids: torch.Tensor) -> Any:
        """A fresh KV cache holding all prompt tokens but the last (scoring feeds that one with each
        choice), with room for one more without copying itself (kv_cache.py)."""
        cache = growing_copy(self.prefix_cache(prepared), ids.shape[1] - prepared.num_tokens + 1)
        start = prepared.num_tokens + 1
        if ids.shape[1] - 1 > start:
            with torch.inference_mode():
                self.model(input_ids=ids[:, start:-1], past_key_values=cache, use_cache=True)
        return cache

    # ----- generation ----------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the running generation at its next token step."""
        self._cancel.set()

    @property
    def tokens_generated(self) -> int:
        """Tokens the running (or last) generation has produced so far."""
        return self._criteria.steps

    def eos_ids(self) -> list[int]:
        """Every id that ends an answer: the tokenizer's and the generation config's."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    @property
    def pad_token_id(self) -> int:
        """The id batches are padded with (the EOS id where the tokenizer has no pad token)."""
        if self.tokenizer.pad_token_id is not None:
            return int(self.tokenizer.pad_token_id)
        return (self.eos_ids() or [0])[0]

    def generation_config(self, max_new_tokens: int, **sampling: Any) -> Any:
        """Greedy unless sampling options say otherwise; shared by the streamed and the batched answers."""
        from transformers import GenerationConfig

        unknown = set(sampling) - _SAMPLING_KEYS
        if unknown:
            raise TypeError(f"unknown sampling option(s) {sorted(unknown)}; allowed: {sorted(_SAMPLING_KEYS)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        eos = self.eos_ids()
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=bool(sampling.pop("do_sample", False)),
            eos_token_id=eos or None, pad_token_id=self.pad_token_id, **sampling,
        )
        if not config.do_sample:
            config.temperature = config.top_p = config.top_k = None
        return config

    def decode_answer(self, prepared: PreparedImage, new_ids: Sequence[int]) -> dict[str, Any]:
        """Text, token count and box of generated ids (EOS and padding dropped): what `Answer` holds
        besides choices and timings, the same for one question and for a batch."""
        eos = set(self.eos_ids())
        n_tokens = len([i for i in new_ids if i not in eos and i != self.tokenizer.pad_token_id])
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        box_normalized = boxes.parse_box(self.tokenizer.decode(new_ids, skip_special_tokens=False))
        mapped = box_normalized is not None and prepared.geometry is not None
        box = boxes.to_voxels(box_normalized, prepared.geometry) if mapped else None
        return {"text": text, "n_tokens": n_tokens, "box": box, "box_normalized": box_normalized}

    def _generate_in_thread(self, prepared: PreparedImage, ids: torch.Tensor, max_new_tokens: int,
                            sampling: dict[str, Any]) -> tuple[Any, Future, dict[str, Any]]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer
        from transformers.cache_utils import DynamicCache

        config = self.generation_config(max_new_tokens, **sampling)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        # one pass (4B: ~0.5 s on 2 cores) for question, first token and a new scan's prefix (kv_cache.prefix_copy)
        prefix, fresh = prepared.num_tokens + 1, prepared.prefix_cache is None
        start = DynamicCache(config=self.model.config) if fresh else self.prefix_cache(prepared)
        cache = growing_copy(start, ids.shape[1] - (0 if fresh else prefix) + max_new_tokens)
        image = {"image_features": prepared.features} if fresh else {}
        result: dict[str, Any] = {}
        self._criteria = _CancelCriteria(self._cancel)

        def run() -> None:
            try:
                with torch.inference_mode():
                    result["ids"] = self.model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                        generation_config=config, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([self._criteria]), **image,
                    )
                if fresh and prepared.prefix_cache is None:
                    prepared.prefix_cache = prefix_copy(cache, prefix)
            except BaseException as exc:  # surfaced in the consumer's thread
                result["error"] = exc
                streamer.end()

        return streamer, self._generator.submit(run), result

    def stream(self, volume_or_tensor: Any, question: str, choices: Sequence[str] | None = None,
               priors: Sequence[int] | None = None, max_new_tokens: int = 64, prior_label: str | None = None,
               slice_index: int | None = None, **sampling: Any) -> Iterator[str]:
        """Yield the answer's text pieces as they are generated (closing the iterator cancels);
        `slice_index` asks about that axial slice of the volume instead of the whole scan."""
        finding = None if slice_index is not None else located_finding(self.model, question)
        if finding is not None:
            yield located_answer(self, self.prepare(volume_or_tensor), finding)["text"]
            return
        run = self._run(volume_or_tensor, question, choices, priors, max_new_tokens, prior_label, sampling, slice_index)
        yield from (piece for piece, _ in run if piece)

    def _run(self, volume_or_tensor: Any, question: str, choices: Sequence[str] | None, priors: Sequence[int] | None,
             max_new_tokens: int, prior_label: str | None, sampling: dict[str, Any],
             slice_index: int | None = None) -> Iterator[tuple[str, dict]]:
        self._cancel.clear()  # here, not later: a cancel during encoding/prefill still stops this answer
        prepared = self.prepare(volume_or_tensor, slice_index=slice_index)
        prepared = question_view(self.model, prepared, f"{question} {prior_label or ''}")  # priors name one too
        ids = self.prompt_ids(self.build_prompt(question, choices, priors, prior_label), prepared.num_tokens)
        with self._generating:
            streamer, job, result = self._generate_in_thread(prepared, ids, max_new_tokens, dict(sampling))
            try:
                for piece in streamer:
                    yield piece, result
            finally:
                if not job.done():
                    self._cancel.set()
                job.result()
        if "error" in result:
            raise RuntimeError(f"generation failed: {result['error']}") from result["error"]
        yield "", {**result, "prepared": prepared, "prompt_ids": ids}

    def answer(self, volume_or_tensor: Any, question: str, choices: Sequence[str] | None = None,
               priors: Sequence[int] | None = None, max_new_tokens: int = 64, prior_label: str | None = None,
               on_text: Callable[[str], None] | None = None, slice_index: int | None = None, **sampling: Any) -> Answer:
        """Generate an answer (greedy unless sampling options say otherwise); closed questions also get
        per-choice likelihood scores and the best letter; a box in the text is mapped to voxels.
        `on_text` receives the text pieces as they come (streaming and the full result in one call);
        `slice_index` asks about that axial slice instead of the whole scan (OmniCT family)."""
        start = time.perf_counter()
        finding = None if slice_index is not None else located_finding(self.model, question)
        if finding is not None:  # a box the box head reads off the image (model.inference.locate)
            located = Answer(**located_answer(self, self.prepare(volume_or_tensor), finding))
            if on_text is not None:
                on_text(located.text)
            return located
        final: dict[str, Any] = {}
        for piece, state in self._run(volume_or_tensor, question, choices, priors, max_new_tokens, prior_label,
                                      sampling, slice_index):
            if piece and on_text is not None:
                on_text(piece)
            final = state
        first_at = self._criteria.first_token_at
        first = first_at - start if first_at is not None else None
        prompt_len = final["prompt_ids"].shape[1]
        prepared: PreparedImage = final["prepared"]
        new_ids = final["ids"][0, prompt_len:].tolist()
        decoded = self.decode_answer(prepared, new_ids)
        choice = scores = None
        if prompts.listed_choices(choices):
            scores = self.score_choices(prepared, final["prompt_ids"], choices)  # type: ignore[arg-type]
            choice = max(scores, key=scores.__getitem__)
        return Answer(**decoded, choice=choice, choice_scores=scores, latency_first_token_s=first,
                      total_s=time.perf_counter() - start, token_ids=tuple(new_ids))

    def score_choices(self, prepared: PreparedImage, prompt_ids: torch.Tensor, choices: Sequence[str]) -> dict[str, float]:
        """Softmax over choices of the mean log-likelihood of `"{letter}. {choice}"` after the prompt,
        from one batched forward on a copy of the prompt's KV cache."""
        offered = prompts.listed_choices(choices)
        targets = [self.tokenizer(prompts.format_target(text, letter), add_special_tokens=False)["input_ids"]
                   for letter, text in offered]
        width = max(len(t) for t in targets)
        pad = self.pad_token_id  # masked: never scored
        last = int(prompt_ids[0, -1])
        batch = torch.tensor([[last, *t, *[pad] * (width - len(t))] for t in targets], device=self.device)
        mask = torch.tensor([[1] * (len(t) + 1) + [0] * (width - len(t)) for t in targets], device=self.device)
        with torch.inference_mode():
            cache = self._prompt_cache(prepared, prompt_ids)
            cache.batch_repeat_interleave(len(targets))
            attention = torch.cat([torch.ones(len(targets), prompt_ids.shape[1] - 1, dtype=mask.dtype,
                                              device=self.device), mask], dim=1)
            logits = self.model(input_ids=batch, attention_mask=attention, past_key_values=cache).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, batch[:, 1:, None])[..., 0]
            valid = mask[:, 1:].float()
            mean = (logp * valid).sum(1) / valid.sum(1)
            probs = torch.softmax(mean, dim=0)
        return {letter: float(p) for (letter, _), p in zip(offered, probs)}


