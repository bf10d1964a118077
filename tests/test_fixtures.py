"""tests/fixtures.py: random-weight checkpoints with the real key names, shapes and file layouts.

Read back with the reference libraries (torch, safetensors), independently of asymvq's own readers.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from asymvq import tables
from asymvq.config import DiffusionSpec
from fixtures import NAMES, CheckpointCache, fixture_spec, schedule_buffers, write_checkpoint


SD = ("sd15-inpaint", "sd15-txt2img")
DECODERS = ("decoder-base", "decoder-large", "decoder-large2")


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    return torch.load(path, weights_only=False)["state_dict"]


@pytest.mark.parametrize("which", NAMES)
@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_tiny_fixture_satisfies_its_configs_requirements(checkpoints: CheckpointCache, which: str, fmt: str) -> None:
    sd = state_dict(checkpoints.get(which, fmt=fmt))
    tables.check(tables.requirements(fixture_spec(which)), {n: t.numpy() for n, t in sd.items()})


@pytest.mark.parametrize("which", NAMES)
def test_ckpt_and_safetensors_hold_the_same_tensors_in_the_same_order(checkpoints: CheckpointCache, which: str) -> None:
    a = state_dict(checkpoints.get(which, fmt="ckpt"))
    b = state_dict(checkpoints.get(which, fmt="safetensors"))
    assert list(a) == list(b)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("which", SD)
def test_sd_fixture_holds_exactly_the_keys_of_an_sd_checkpoint(checkpoints: CheckpointCache, which: str) -> None:
    spec = fixture_spec(which)
    assert isinstance(spec, DiffusionSpec)
    sd = state_dict(checkpoints.get(which))
    expected = set(tables.unet_tensors(spec.unet)) | set(tables.text_encoder_tensors(spec.text_encoder))
    expected |= set(tables.vae_encoder_tensors(spec.first_stage))
    expected |= set(tables.decoder_tensors(spec.first_stage, prefix="first_stage_model."))
    expected |= set(tables.schedule_buffer_names())
    expected.add("cond_stage_model.transformer.text_model.embeddings.position_ids")
    assert set(sd) == expected


def test_sd_fixture_carries_sds_vanilla_vae_decoder(checkpoints: CheckpointCache) -> None:
    names = [n for n in state_dict(checkpoints.get("sd15-inpaint")) if n.startswith("first_stage_model.decoder.")]
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in names
    assert not [
        n for n in names if n.startswith(("first_stage_model.decoder.encoder.", "first_stage_model.decoder.up_layers."))
    ]


def test_position_ids_are_int64_zero_to_76(checkpoints: CheckpointCache) -> None:
    ids = state_dict(checkpoints.get("sd15-txt2img"))["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64
    assert torch.equal(ids, torch.arange(77)[None])


def test_schedule_buffers_are_float32_with_the_spec_reference_values(checkpoints: CheckpointCache) -> None:
    sd = state_dict(checkpoints.get("sd15-inpaint"))
    ac = sd["alphas_cumprod"]
    assert ac.dtype == torch.float32 and ac.shape == (1000,)
    assert ac[[0, 1, 999]].tolist() == pytest.approx([0.99914998, 0.99829602, 0.0046600983], rel=1e-7)
    assert all(sd[n].dtype == torch.float32 for n in tables.schedule_buffer_names())


def test_schedule_buffers_follow_the_ddpm_formulas() -> None:
    spec = fixture_spec("sd15-txt2img", tiny=False)
    assert isinstance(spec, DiffusionSpec)
    b = {n: v.double() for n, v in schedule_buffers(spec).items()}
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    ac = np.cumprod(1 - betas)
    np.testing.assert_allclose(b["betas"], betas, rtol=1e-6)
    np.testing.assert_allclose(b["alphas_cumprod_prev"][1:], ac[:-1], rtol=1e-6)
    np.testing.assert_allclose(b["sqrt_recipm1_alphas_cumprod"], np.sqrt(1 / ac - 1), rtol=1e-6)
    np.testing.assert_allclose(
        b["posterior_mean_coef2"][1:], (1 - ac[:-1]) * np.sqrt(1 - betas[1:]) / (1 - ac[1:]), rtol=1e-6
    )


@pytest.mark.parametrize("which", DECODERS)
def test_decoder_fixture_is_a_lightning_checkpoint(checkpoints: CheckpointCache, which: str) -> None:
    ckpt = torch.load(checkpoints.get(which), weights_only=False)
    assert {"state_dict", "epoch", "global_step", "optimizer_states", "lr_schedulers", "callbacks"} <= set(ckpt)
    assert isinstance(ckpt["hyper_parameters"], argparse.Namespace)
    prefixes = {n.split(".")[0] for n in ckpt["state_dict"]}
    assert prefixes == {"encoder", "quant_conv", "post_quant_conv", "decoder", "loss"}


@pytest.mark.parametrize("which", DECODERS)
def test_decoder_fixture_holds_unused_up_layers_and_the_condition_encoder(
    checkpoints: CheckpointCache, which: str
) -> None:
    sd = state_dict(checkpoints.get(which, fmt="safetensors"))
    spec = fixture_spec(which)
    for name, shape in {**tables.up_layers_tensors(spec), **tables.cond_encoder_tensors(spec)}.items():
        assert tuple(sd[name].shape) == shape


def test_ema_fixture_has_an_ema_copy_of_every_unet_weight(checkpoints: CheckpointCache) -> None:
    sd = state_dict(checkpoints.get("sd15-inpaint", ema=True))
    unet = [n for n in sd if n.startswith("model.diffusion_model.")]
    ema = {n for n in sd if n.startswith("model_ema.")}
    assert {"model_ema.decay", "model_ema.num_updates"} <= ema
    assert {"model_ema.diffusion_model" + n[len("model.diffusion_model.") :].replace(".", "") for n in unet} == ema - {
        "model_ema.decay",
        "model_ema.num_updates",
    }


def test_same_seed_gives_the_same_weights_and_another_seed_others(tmp_path: Path) -> None:
    a = state_dict(write_checkpoint(tmp_path / "a.safetensors", "decoder-base", seed=1))
    b = state_dict(write_checkpoint(tmp_path / "b.safetensors", "decoder-base", seed=1))
    c = state_dict(write_checkpoint(tmp_path / "c.safetensors", "decoder-base", seed=2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["decoder.conv_in.weight"], c["decoder.conv_in.weight"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fixture_weights_can_be_half_precision(checkpoints: CheckpointCache, dtype: str) -> None:
    sd = state_dict(checkpoints.get("decoder-base", fmt="safetensors", dtype=dtype))
    assert sd["decoder.conv_in.weight"].dtype == getattr(torch, dtype)
    assert sd["loss.logvar"].dtype == getattr(torch, dtype)


def test_random_init_is_scaled_for_stable_activations(checkpoints: CheckpointCache) -> None:
    sd = state_dict(checkpoints.get("sd15-inpaint"))
    conv = sd["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"]
    assert conv.std().item() == pytest.approx(1 / math.sqrt(conv[0].numel()), rel=0.05)
    norm = sd["model.diffusion_model.input_blocks.1.0.in_layers.0.weight"]
    assert 0.9 <= norm.min().item() and norm.max().item() <= 1.1
    bias = sd["model.diffusion_model.input_blocks.1.0.in_layers.2.bias"]
    assert bias.abs().max().item() < 0.1


def test_tiny_text_encoder_runs_finite_in_transformers(checkpoints: CheckpointCache) -> None:
    import transformers  # test-only reference

    spec = fixture_spec("sd15-txt2img")
    assert isinstance(spec, DiffusionSpec)
    s = spec.text_encoder
    model = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=s.vocab_size,
            hidden_size=s.width,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            intermediate_size=s.mlp,
            max_position_embeddings=s.max_positions,
            hidden_act="quick_gelu",
        )
    )
    prefix = "cond_stage_model.transformer."
    sd = {n[len(prefix) :]: t for n, t in state_dict(checkpoints.get("sd15-txt2img")).items() if n.startswith(prefix)}
    expects_text_model = any(k.startswith("text_model.") for k in model.state_dict())
    if not expects_text_model:
        sd = {n.removeprefix("text_model."): t for n, t in sd.items()}
    model.load_state_dict(sd, strict=False)  # position_ids is a non-persistent buffer in newer releases
    missing = set(model.state_dict()) - set(sd)
    assert missing <= {"text_model.embeddings.position_ids", "embeddings.position_ids"}
    ids = torch.tensor([[49406, 320, 1125, 539, 49407] + [49407] * 72])
    with torch.no_grad():
        out = model(ids).last_hidden_state
    assert torch.isfinite(out).all()
    assert out.std().item() == pytest.approx(1.0, rel=0.2)


def test_unknown_fixture_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown fixture 'sd21'"):
        write_checkpoint(tmp_path / "x.ckpt", "sd21")


def test_interrupted_fixture_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fixtures as fx

    def fail(*args: object, **kwargs: object) -> torch.Tensor:
        raise KeyboardInterrupt

    monkeypatch.setattr(fx, "random_tensor", fail)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path / "x.safetensors", "decoder-base")
    assert list(tmp_path.iterdir()) == []


def test_command_line_writes_the_requested_files(tmp_path: Path) -> None:
    from fixtures import main

    assert main(["--out", str(tmp_path), "--which", "decoder-base", "--format", "ckpt,safetensors"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder-base-tiny.ckpt", "decoder-base-tiny.safetensors"]


@pytest.mark.slow
@pytest.mark.parametrize("which", NAMES)
def test_full_size_fixture_satisfies_the_original_config(checkpoints: CheckpointCache, which: str) -> None:
    path = checkpoints.get(which, tiny=False, fmt="safetensors")
    with safetensors.safe_open(path, "np") as f:
        shapes = {n: f.get_slice(n).get_shape() for n in f.keys()}
    fake = {n: np.broadcast_to(np.float32(0), s) for n, s in shapes.items()}
    req = tables.requirements(fixture_spec(which, tiny=False))
    tables.check(req, fake)
    path.unlink()  # several GB each


def test_both_spellings_of_the_fixtures_module_are_one_module_with_one_session_cache() -> None:
    import fixtures as plain
    import tests.fixtures as packaged

    assert packaged is plain
