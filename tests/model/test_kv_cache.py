"""The in-place KV cache: the same keys and values as transformers' own under every cache operation,
the same greedy answers, and no copy of the cache per decoded token."""
import copy

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from model.inference.kv_cache import GrowingLayer, GrowingWindowLayer, growing_copy, prefix_copy
from model.inference.loading import load_vlm


def _states(generator: torch.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(batch, 2, length, 4, generator=generator),
            torch.randn(batch, 2, length, 4, generator=generator))


def test_growing_layer_holds_what_dynamic_layer_holds_through_every_cache_operation():
    generator = torch.Generator().manual_seed(0)
    plain, grown = DynamicLayer(), GrowingLayer(spare=3)
    steps = [("update", 3, 5), ("update", 3, 1), ("update", 3, 1), ("update", 3, 1), ("update", 3, 4),
             ("crop", -2), ("update", 3, 1), ("select", torch.tensor([2, 0, 1])), ("update", 3, 1),
             ("select", torch.tensor([2, 0])), ("update", 2, 1),
             ("repeat", 2), ("update", 4, 2), ("reset",), ("update", 4, 3)]
    for step in steps:
        if step[0] == "update":
            keys, values = _states(generator, step[1], step[2])
            expected = plain.update(keys, values)
            got = grown.update(keys, values)
            assert all(torch.equal(e, g) for e, g in zip(expected, got)), step
            assert grown.get_seq_length() == plain.get_seq_length()
        else:
            operation = {"crop": "crop", "select": "batch_select_indices", "repeat": "batch_repeat_interleave",
                         "reset": "reset"}[step[0]]
            for layer in (plain, grown):
                getattr(layer, operation)(*step[1:])


def test_decoding_writes_in_place_until_the_spare_room_is_used():
    generator = torch.Generator().manual_seed(1)
    layer = GrowingLayer(spare=4)
    layer.update(*_states(generator, 1, 6))
    start = layer.keys.data_ptr()
    for _ in range(4):
        layer.update(*_states(generator, 1, 1))
        assert layer.keys.data_ptr() == start  # a view of the same buffer: nothing copied
    layer.update(*_states(generator, 1, 1))  # past the room: one re-allocation
    assert layer.keys.data_ptr() != start and layer.get_seq_length() == 11



def test_a_sliding_window_layer_grows_in_place_inside_its_window_and_is_transformers_own_past_it():
    generator = torch.Generator().manual_seed(6)
    plain, grown = DynamicSlidingWindowLayer(sliding_window=10), GrowingWindowLayer(sliding_window=10, spare=8)
    pointers = []
    for step in [("update", 4), ("update", 1), ("update", 1), ("crop", -1), ("update", 1), ("update", 1),
                 ("update", 1), ("update", 2), ("update", 1), ("update", 1)]:
        if step[0] == "crop":
            plain.crop(step[1])
            grown.crop(step[1])
            continue
        keys, values = _states(generator, 1, step[1])
        expected, got = plain.update(keys, values), grown.update(keys, values)
        assert all(torch.equal(e, g) for e, g in zip(expected, got)), step
        assert torch.equal(plain.keys, grown.keys) and torch.equal(plain.values, grown.values)
        assert grown.get_seq_length() == plain.get_seq_length()
        assert grown.get_mask_sizes(1) == plain.get_mask_sizes(1)
        pointers.append(grown.keys.data_ptr())
    assert len(set(pointers[:6])) == 1  # inside the window: one buffer, nothing copied
    assert grown.get_seq_length() == 12  # and past it, the window's own rules
    cache = DynamicCache()
    cache.layers = [plain]
    assert isinstance(growing_copy(cache, 4).layers[0], DynamicSlidingWindowLayer)
    assert type(growing_copy(cache, 4).layers[0]) is DynamicSlidingWindowLayer  # past its window: copied as it is

def test_growing_copy_leaves_the_shared_prefix_untouched_and_answers_alike(tiny_vlm_dir):
    vlm = load_vlm(tiny_vlm_dir, device="cpu", dtype="float32")
    image = torch.rand(1, *vlm.image_size, generator=torch.Generator().manual_seed(2))
    prepared = vlm.prepare(image)
    prefix = vlm.prefix_cache(prepared)
    before = [layer.keys.clone() for layer in prefix.layers]
    ids = vlm.prompt_ids(vlm.build_prompt("Is there a pleural effusion?"))
    outputs = []
    for cache in (copy.deepcopy(prefix), growing_copy(prefix, 32)):
        assert isinstance(cache, DynamicCache)
        with torch.inference_mode():
            vlm.model(input_ids=ids[:, prepared.num_tokens + 1:-1], past_key_values=cache, use_cache=True)
            outputs.append(vlm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                                              max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                              pad_token_id=vlm.pad_token_id))
    assert torch.equal(outputs[0], outputs[1]) and outputs[0].shape[1] == ids.shape[1] + 12
    assert all(torch.equal(b, layer.keys) for b, layer in zip(before, prefix.layers))
    assert all(type(layer) is DynamicLayer for layer in prefix.layers)
    passes = []
    hook = vlm.model.language_model.register_forward_pre_hook(lambda module, args: passes.append(1))
    answer = vlm.answer(image, "Is there a pleural effusion?", max_new_tokens=6, min_new_tokens=6)
    hook.remove()
    assert answer.n_tokens == 6
    assert list(answer.token_ids) == outputs[0][0, ids.shape[1]:ids.shape[1] + 6].tolist()
    assert len(passes) == 6  # the question and the first token in one pass, then one per token


def test_a_new_scan_reads_image_question_and_first_token_in_one_pass_and_keeps_its_prefix(tiny_vlm_dir):
    vlm = load_vlm(tiny_vlm_dir, device="cpu", dtype="float32")
    image = torch.rand(1, *vlm.image_size, generator=torch.Generator().manual_seed(3))
    question = "Is there a pleural effusion?"
    reference_prefix = vlm.prefix_cache(vlm.prepare(image))  # the image prefix on its own, as the chat reads ahead
    reference = vlm.answer(image, question, max_new_tokens=6, min_new_tokens=6)
    vlm.clear_cache()
    assert vlm.prepare(image).prefix_cache is None
    passes = []
    hook = vlm.model.language_model.register_forward_pre_hook(lambda module, args: passes.append(1))
    answer = vlm.answer(image, question, max_new_tokens=6, min_new_tokens=6)
    hook.remove()
    assert len(passes) == 6  # no pass of its own for the image prefix
    assert answer.token_ids == reference.token_ids
    kept = vlm.prepare(image).prefix_cache  # cut from that pass, for the next question
    assert kept is not None and kept.get_seq_length() == vlm.num_image_tokens + 1
    for mine, theirs in zip(kept.layers, reference_prefix.layers):
        torch.testing.assert_close(mine.keys, theirs.keys)
        torch.testing.assert_close(mine.values, theirs.values)
    follow_up = vlm.answer(image, question, max_new_tokens=6, min_new_tokens=6)
    assert follow_up.token_ids == reference.token_ids


def test_the_prefix_cut_keeps_each_layers_kind_and_refuses_what_a_window_dropped():
    generator = torch.Generator().manual_seed(5)
    cache = DynamicCache()
    cache.layers = [DynamicSlidingWindowLayer(sliding_window=8), GrowingLayer(4), DynamicLayer()]
    keys, values = _states(generator, 1, 6)
    for layer in cache.layers:
        layer.update(keys, values)
    cut = prefix_copy(cache, 4)
    assert [type(layer) for layer in cut.layers] == [DynamicSlidingWindowLayer, DynamicLayer, DynamicLayer]
    assert all(torch.equal(layer.keys, keys[:, :, :4]) and torch.equal(layer.values, values[:, :, :4])
               for layer in cut.layers)
    assert cut.get_seq_length() == 4 and cache.get_seq_length() == 6  # the source is left as it was
    assert prefix_copy(cache, 7) is None  # more than it holds
    more_keys, more_values = _states(generator, 1, 4)
    cache.layers[0].update(more_keys, more_values)  # 10 positions through a window of 8: the first are gone
    assert prefix_copy(cache, 4) is None


def test_a_sliding_window_model_answers_as_transformers_generates_across_its_window():
    """Published M3D-LaMed-Phi-3 has a window on every layer: in place inside it, its own rules past it."""
    from model.inference.vlm import VLM
    from model.nets.lamed import LamedForCausalLM
    from tests.model.conftest import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer, "phi3")
    question = "Is there a pleural effusion?"
    torch.manual_seed(0)
    probe = VLM(LamedForCausalLM(config).eval(), tokenizer)
    prompt_length = probe.prompt_ids(probe.build_prompt(question)).shape[1]
    config.text_config.sliding_window = prompt_length + 4  # the answer's fifth token is past the window
    torch.manual_seed(0)
    vlm = VLM(LamedForCausalLM(config).eval(), tokenizer)
    image = torch.rand(1, *vlm.image_size, generator=torch.Generator().manual_seed(4))
    prepared = vlm.prepare(image)
    ids = vlm.prompt_ids(vlm.build_prompt(question))
    with torch.inference_mode():
        reference = vlm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       image_features=prepared.features, max_new_tokens=10, min_new_tokens=10,
                                       do_sample=False, pad_token_id=vlm.pad_token_id)[0, ids.shape[1]:].tolist()
    first = vlm.answer(image, question, max_new_tokens=10, min_new_tokens=10)  # a new scan: one pass, prefix cut
    assert list(first.token_ids) == reference
    assert prepared.prefix_cache is None  # the window dropped its first positions: not cut, computed when asked
    assert type(vlm.prefix_cache(prepared).layers[0]) is DynamicSlidingWindowLayer
    assert list(vlm.answer(image, question, max_new_tokens=10, min_new_tokens=10).token_ids) == reference
