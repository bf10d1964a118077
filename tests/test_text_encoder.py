"""asymvq.TextEncoder: SD v1's CLIP text transformer in C (SPEC §1.2-1.4).

Reference: transformers' ``CLIPTextModel`` (eager attention) with the same random weights.
Metric: max |asymvq - reference| over the whole last_hidden_state, relative to std(reference):
fp32 <= 1e-4 (measured: 2.5e-6 tiny, 5.4e-6 full size); bf16 activations, stated bounds
max <= 0.06 tiny / 0.1 full and mean <= 0.008 tiny / 0.01 full (measured max 0.030-0.042 tiny,
0.058-0.064 full; mean 0.0053-0.0058 tiny, 0.0072-0.0075 full, over seeds 0-4 / 0-1).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
import transformers
from fixtures import random_tensor
from isa import needs_bf16
from reference import clip_vocab

from asymvq import checkpoint, config, tables
from asymvq.config import TextEncoderSpec
from asymvq.tables import WeightsError
from asymvq.text_encoder import TextEncoder
from asymvq.tokenizer import CLIPTokenizer, VocabNotFoundError

FP32_BOUND = 1e-4
BF16_BOUND = {"tiny": (0.06, 0.008), "full": (0.1, 0.01)}  # (max, mean) |error| / std(reference)
TINY = TextEncoderSpec(width=64, layers=2, heads=4, mlp=128)
FULL = TextEncoderSpec()
PREFIX = tables.TEXT_PREFIX
PROMPTS = [
    "",
    "a photograph of an astronaut riding a horse",
    "Café naïve 東京 🐱 &amp; it's 1999!!! " * 12,  # far longer than 77 tokens: truncated
]


def make_weights(spec: TextEncoderSpec, seed: int = 0) -> Dict[str, np.ndarray]:
    return {name: random_tensor(name, shape, seed).numpy() for name, shape in tables.text_encoder_tensors(spec).items()}


def reference_model(spec: TextEncoderSpec, weights: Dict[str, np.ndarray]) -> torch.nn.Module:
    cfg = transformers.CLIPTextConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.width,
        intermediate_size=spec.mlp,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        hidden_act="quick_gelu",
        layer_norm_eps=spec.eps,
    )
    model = transformers.CLIPTextModel._from_config(cfg, attn_implementation="eager").eval()
    # transformers < 5 nests the modules under "text_model."; 5 does not.
    inner = "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""
    state = {
        inner + name[len(PREFIX) :]: torch.from_numpy(np.array(a, dtype=np.float32)) for name, a in weights.items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    return model


def reference(model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()


def rel_errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max, mean) |got - want| / std(want)."""
    err = np.abs(got.astype(np.float64) - want)
    std = float(want.std())
    return float(err.max()) / std, float(err.mean()) / std


def random_ids(spec: TextEncoderSpec, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, spec.vocab_size, (batch, spec.max_positions), dtype=np.int64)


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return CLIPTokenizer.from_file(clip_vocab.BPE_GZ)


@pytest.fixture(scope="module")
def tiny_weights() -> Dict[str, np.ndarray]:
    return make_weights(TINY)


@pytest.fixture(scope="module")
def tiny_ref(tiny_weights) -> torch.nn.Module:
    return reference_model(TINY, tiny_weights)


@pytest.fixture(scope="module")
def tiny(tiny_weights, tok) -> TextEncoder:
    return TextEncoder.from_config(TINY, tiny_weights, vocab=tok)


# ------------------------------------------------------------------ parity (tiny)


def test_tiny_fp32_matches_transformers_on_random_ids(tiny, tiny_ref):
    ids = random_ids(TINY, 3)
    worst, _ = rel_errors(tiny.encode_ids(ids), reference(tiny_ref, ids))
    assert worst <= FP32_BOUND


def test_tiny_fp32_matches_transformers_on_padded_prompts(tiny, tiny_ref, tok):
    ids = tok(PROMPTS)
    assert (ids[0, 2:] == 49407).all() and (ids[1, -10:] == 49407).all()  # padded rows ...
    assert ids[2, -1] == 49407 and (ids[2, 1:-1] != 49407).all()  # ... and a truncated one
    worst, _ = rel_errors(tiny.encode(PROMPTS), reference(tiny_ref, ids))
    assert worst <= FP32_BOUND


@needs_bf16
def test_tiny_bf16_within_stated_bound(tiny_weights, tiny_ref, tok):
    enc = TextEncoder.from_config(TINY, tiny_weights, precision="bf16")
    ids = np.concatenate([random_ids(TINY, 2), tok(PROMPTS)])
    worst, mean = rel_errors(enc.encode_ids(ids), reference(tiny_ref, ids))
    assert worst <= BF16_BOUND["tiny"][0] and mean <= BF16_BOUND["tiny"][1]


# ------------------------------------------------------------------ behaviour


def test_output_is_float32_batch_by_77_by_width(tiny):
    for batch in (1, 3):
        out = tiny.encode_ids(random_ids(TINY, batch))
        assert out.dtype == np.float32 and out.shape == (batch, 77, TINY.width)


def test_a_bare_string_is_a_batch_of_one(tiny):
    assert tiny.encode("").shape == (1, 77, TINY.width)


def test_encode_equals_encode_ids_of_the_tokenizer_output(tiny, tok):
    assert np.array_equal(tiny.encode(PROMPTS), tiny.encode_ids(tok(PROMPTS)))


def test_each_row_is_independent_of_the_rest_of_the_batch(tiny):
    ids = random_ids(TINY, 3)
    together = tiny.encode_ids(ids)
    alone = np.concatenate([tiny.encode_ids(ids[i : i + 1]) for i in range(3)])
    worst, _ = rel_errors(together, alone)
    assert worst <= FP32_BOUND


def test_attention_is_causal_and_has_no_padding_mask(tiny):
    ids = random_ids(TINY, 1)
    changed = ids.copy()
    changed[0, 40] = (changed[0, 40] + 1) % TINY.vocab_size
    a, b = tiny.encode_ids(ids), tiny.encode_ids(changed)
    assert np.array_equal(a[0, :40], b[0, :40])  # earlier positions never see later tokens
    assert (np.abs(a[0, 40:] - b[0, 40:]).max(axis=1) > 0).all()  # every later one does


def test_repeated_calls_give_identical_results(tiny):
    ids = random_ids(TINY, 2)
    assert np.array_equal(tiny.encode_ids(ids), tiny.encode_ids(ids))


def test_one_plan_per_batch_size_is_built_and_reused(tiny_weights):
    enc = TextEncoder.from_config(TINY, tiny_weights)
    for batch in (2, 1, 2, 1):
        enc.encode_ids(random_ids(TINY, batch))
    assert sorted((p["batch"], p["tokens"]) for p in enc.plans) == [(1, 77), (2, 77)]
    assert enc.memory_bytes > 0


def test_concurrent_calls_from_threads_give_the_serial_results(tiny):
    batches = [random_ids(TINY, 1 + i % 3, seed=i) for i in range(6)]
    serial = [tiny.encode_ids(ids) for ids in batches]
    results: list = [None] * len(batches)

    def work(i: int) -> None:
        results[i] = tiny.encode_ids(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, s) for r, s in zip(results, serial))


def test_num_parameters_counts_every_weight(tiny):
    assert tiny.num_parameters == tables.count_parameters(tables.text_encoder_tensors(TINY))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("shape", [(77,), (2, 76), (2, 78), (0, 77), (1, 1, 77)])
def test_ids_of_the_wrong_shape_are_rejected(tiny, shape):
    with pytest.raises(ValueError, match=r"shape \[batch, 77\]"):
        tiny.encode_ids(np.zeros(shape, dtype=np.int64))


@pytest.mark.parametrize("bad", [-1, TINY.vocab_size, 2**40])
def test_ids_outside_the_vocabulary_are_rejected_with_their_position(tiny, bad):
    ids = random_ids(TINY, 2)
    ids[1, 5] = bad
    with pytest.raises(ValueError, match="outside the vocabulary") as e:
        tiny.encode_ids(ids)
    assert f"{bad} at [1, 5]" in str(e.value) and f"[0, {TINY.vocab_size})" in str(e.value)


def test_non_integer_ids_are_rejected(tiny):
    with pytest.raises(TypeError, match="integers"):
        tiny.encode_ids(np.zeros((1, 77), dtype=np.float32))


def test_unknown_precision_is_rejected(tiny_weights):
    with pytest.raises(ValueError, match="precision"):
        TextEncoder.from_config(TINY, tiny_weights, precision="fp16")


def test_every_missing_or_misshaped_weight_is_reported_at_once(tiny_weights):
    weights = dict(tiny_weights)
    del weights[PREFIX + "encoder.layers.1.mlp.fc2.bias"]
    del weights[PREFIX + "final_layer_norm.weight"]
    weights[PREFIX + "encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(WeightsError) as e:
        TextEncoder.from_config(TINY, weights)
    message = str(e.value)
    assert "layers.1.mlp.fc2.bias" in message and "final_layer_norm.weight" in message
    assert "q_proj.weight is [64, 32], expected [64, 64]" in message


def test_the_c_core_reports_every_problem_of_an_unchecked_dict(tiny_weights):
    # The binding checks by itself too (names, shapes, dtypes), listing all problems.
    from asymvq import _core

    weights = {k: v for k, v in tiny_weights.items() if "layers.1." not in k}
    weights[PREFIX + "final_layer_norm.bias"] = np.zeros(64, np.float64)
    with pytest.raises(ValueError, match=r"17 weight problems") as e:
        _core.TextEncoder(weights, 49408, 64, 2, 4, 128, 77, 1e-5)
    assert "final_layer_norm.bias: dtype" in str(e.value)


def test_an_autoencoder_config_is_rejected():
    with pytest.raises(ValueError, match="not a diffusion model with a text encoder"):
        TextEncoder.from_config(config.packaged_tiny_config("autoencoder_kl_32x32x4"), {})


def test_a_config_dict_with_an_unknown_key_is_rejected(tiny_weights):
    with pytest.raises(ValueError, match="unknown key.*depth"):
        TextEncoder.from_config({"width": 64, "depth": 2}, tiny_weights)


# ------------------------------------------------------------------ configs, files, vocabularies


def test_tiny_yaml_config_and_sd_checkpoint_give_the_dict_results(checkpoints, tiny_ref):  # noqa: F811
    path = checkpoints.get("sd15-txt2img", tiny=True, fmt="ckpt")
    enc = TextEncoder.from_config(config.packaged_tiny_config("v1-t2i-inference"), path)
    assert enc.spec == TINY
    ids = random_ids(TINY, 2)
    worst, _ = rel_errors(enc.encode_ids(ids), reference(tiny_ref, ids))
    assert worst <= FP32_BOUND


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_and_bf16_weight_files_are_read(checkpoints, dtype):  # noqa: F811
    path = checkpoints.get("sd15-inpaint", tiny=True, fmt="safetensors", dtype=dtype)
    enc = TextEncoder.from_config(config.packaged_tiny_config("v1-inpainting-inference"), path)
    state = checkpoint.load(path)
    weights = {}
    for name in tables.text_encoder_tensors(TINY):
        a = state[name]
        weights[name] = checkpoint.bf16_to_float32(a) if dtype == "bfloat16" else a.astype(np.float32)
    ids = random_ids(TINY, 2)
    worst, _ = rel_errors(enc.encode_ids(ids), reference(reference_model(TINY, weights), ids))
    assert worst <= FP32_BOUND


def test_a_vocabulary_embedded_in_a_converted_file_is_used(tmp_path, tiny_weights, tok):
    path = tmp_path / "text.safetensors"
    checkpoint.save_safetensors(path, tiny_weights, metadata={"asymvq.vocab.bpe": tok.to_metadata()})
    enc = TextEncoder.from_config(TINY, path)
    assert np.array_equal(enc.tokenizer(PROMPTS), tok(PROMPTS))


def _no_vocabulary_anywhere(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ASYMVQ_CLIP_VOCAB", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))


def test_without_a_vocabulary_encode_lists_the_options_but_encode_ids_works(monkeypatch, tmp_path, tiny_weights):
    _no_vocabulary_anywhere(monkeypatch, tmp_path)
    enc = TextEncoder.from_config(TINY, tiny_weights)
    assert enc.encode_ids(random_ids(TINY, 1)).shape == (1, 77, 64)
    with pytest.raises(VocabNotFoundError, match="ASYMVQ_CLIP_VOCAB") as e:
        enc.encode("a cat")
    assert "convert --tokenizer" in str(e.value) and "Hugging Face" in str(e.value)


def test_the_vocabulary_environment_variable_is_used(monkeypatch, tmp_path, tiny_weights, tok):
    _no_vocabulary_anywhere(monkeypatch, tmp_path)
    monkeypatch.setenv("ASYMVQ_CLIP_VOCAB", str(clip_vocab.BPE_GZ))
    enc = TextEncoder.from_config(TINY, tiny_weights)
    assert np.array_equal(enc.tokenizer(PROMPTS), tok(PROMPTS))


def test_a_vocabulary_path_that_does_not_exist_fails_at_construction(tmp_path, tiny_weights):
    with pytest.raises(VocabNotFoundError, match="does not exist"):
        TextEncoder.from_config(TINY, tiny_weights, vocab=tmp_path / "missing.txt.gz")


# ------------------------------------------------------------------ full size (ViT-L/14)


@pytest.fixture(scope="module")
def full_case(tok):
    weights = make_weights(FULL, seed=1)
    ids = np.concatenate([random_ids(FULL, 1, seed=1), tok(PROMPTS)])
    return weights, ids, reference(reference_model(FULL, weights), ids)


@pytest.mark.slow
def test_full_size_fp32_matches_transformers(full_case):
    weights, ids, want = full_case
    enc = TextEncoder.from_config(config.packaged_config("v1-inpainting-inference"), weights)
    assert enc.num_parameters == 123_060_480
    worst, _ = rel_errors(enc.encode_ids(ids), want)
    assert worst <= FP32_BOUND


@needs_bf16
@pytest.mark.slow
def test_full_size_bf16_within_stated_bound(full_case):
    weights, ids, want = full_case
    enc = TextEncoder.from_config(FULL, weights, precision="bf16")
    worst, mean = rel_errors(enc.encode_ids(ids), want)
    assert worst <= BF16_BOUND["full"][0] and mean <= BF16_BOUND["full"][1]
