"""Diffusers folders (asymvq.diffusers_io): diffusers' and transformers' own ``save_pretrained`` of
random-weight models, loaded by asymvq and compared with the saved models' own outputs.

Folders: SD 1.x pipelines (``model_index.json``; UNet2DConditionModel with 9 or 4 input channels,
AutoencoderKL, CLIPTextModel, tokenizer vocab.json + merges.txt, DDIM scheduler config) and VAE folders
(AutoencoderKL; AsymmetricAutoencoderKL for the base, 1.5x and 2x decoders), at the tiny widths of
``configs/tiny`` here and at the real widths in test_diffusers_format_slow.py.

Tolerances are those of the existing parity tests: fp32 max |asymvq - diffusers| <= 1e-4 x std(diffusers)
for the UNet, the autoencoders and the text encoder.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures import random_tensor, state_dict_items
from reference import clip_vocab
from reference import vae_reference as ref
from reference.unet_reference import build_reference, random_unet_weights, reference_eps

import asymvq
from asymvq import checkpoint, config, convert, diffusers_io, tables
from asymvq.autoencoder import Autoencoder
from asymvq.config import AutoencoderSpec, DiffusionSpec
from asymvq.pipelines import InpaintPipeline, Txt2ImgPipeline

FP32_TOL = 1e-4
SIZES = {"base": "", "large": "_large", "large2": "_large2"}


@pytest.fixture(scope="module", autouse=True)
def torch_single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_close(got: np.ndarray, want: Any, tol: float = FP32_TOL) -> float:
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert got.shape == want.shape and got.dtype == np.float32
    err = float(np.abs(got - want).max() / want.std())
    assert err <= tol, f"max error {err:.3g} x std (bound {tol})"
    return err


# --------------------------------------------------------------------------------------------------
# Writing diffusers folders (what diffusers' save_pretrained writes)


def diffusion_spec(kind: str, tiny: bool = True) -> DiffusionSpec:
    name = "v1-inpainting-inference.yaml" if kind == "inpaint" else "v1-t2i-inference.yaml"
    spec = config.load((config.packaged_tiny_config if tiny else config.packaged_config)(name))
    assert isinstance(spec, DiffusionSpec)
    return spec


def decoder_spec(size: str, tiny: bool = True, condition: bool = True) -> AutoencoderSpec:
    name = f"autoencoder_kl_{'' if condition else 'woc_'}32x32x4{SIZES[size]}.yaml"
    spec = config.load((config.packaged_tiny_config if tiny else config.packaged_config)(name))
    assert isinstance(spec, AutoencoderSpec)
    return spec


def text_model(spec: config.TextEncoderSpec, seed: int = 0) -> torch.nn.Module:
    import transformers

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
    inner = "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""
    state = {
        inner + n[len(tables.TEXT_PREFIX) :]: random_tensor(n, s, seed)
        for n, s in tables.text_encoder_tensors(spec).items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    return model


def first_stage_model(spec: DiffusionSpec) -> torch.nn.Module:
    """diffusers' AutoencoderKL with SD's first stage (encoder and vanilla decoder), random weights."""
    table = tables.vae_encoder_tensors(spec.first_stage)
    table.update(tables.decoder_tensors(spec.first_stage, prefix="first_stage_model."))
    state = {n: random_tensor(n, s, seed=5) for n, s in table.items()}
    return ref.diffusers_autoencoder(spec.first_stage, state, prefix="first_stage_model.")


def asymmetric_model(size: str, tiny: bool = True) -> torch.nn.Module:
    state = dict(state_dict_items(f"decoder-{size}", tiny=tiny))
    return ref.diffusers_autoencoder(decoder_spec(size, tiny), state)


def write_pipeline(
    folder: Path, kind: str, tiny: bool = True, vae: torch.nn.Module | None = None, safe: bool = True
) -> dict[str, Any]:
    """An SD 1.x pipeline folder as diffusers writes it; returns the saved reference models."""
    from diffusers import DDIMScheduler

    spec = diffusion_spec(kind, tiny)
    unet = build_reference(spec.unet, random_unet_weights(spec.unet, seed=1 if kind == "txt2img" else 2))
    text = text_model(spec.text_encoder)
    vae = vae if vae is not None else first_stage_model(spec)
    folder.mkdir(parents=True)
    unet.save_pretrained(folder / "unet", safe_serialization=safe)
    vae.save_pretrained(folder / "vae", safe_serialization=safe)
    text.save_pretrained(folder / "text_encoder")
    if not safe:  # transformers 5 writes safetensors only: the .bin as transformers < 5 wrote it
        state = {
            ("text_model." + k if not k.startswith("text_model.") else k): v.contiguous()
            for k, v in text.state_dict().items()
        }
        (folder / "text_encoder" / "model.safetensors").unlink()
        torch.save(state, folder / "text_encoder" / "pytorch_model.bin")
    clip_vocab.write_hf_files(folder / "tokenizer")
    DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionInpaintPipeline" if kind == "inpaint" else "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", type(vae).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return {"spec": spec, "unet": unet, "text": text, "vae": vae}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("diffusers")
    out: dict[str, Any] = {"root": root}
    out["inpaint"] = write_pipeline(root / "sd-inpaint", "inpaint")
    out["txt2img"] = write_pipeline(root / "sd-txt2img", "txt2img", safe=False)
    for size in SIZES:
        model = asymmetric_model(size)
        model.save_pretrained(root / f"asym-{size}")
        out[f"asym-{size}"] = model
    return out


def unet_inputs(spec: config.UNetSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, spec.in_channels, 16, 8), dtype=np.float32)
    context = rng.standard_normal((2, 77, spec.context_dim), dtype=np.float32)
    return x, np.array([981, 21]), context


def image_inputs(batch: int = 1, h: int = 48, w: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    mask = np.zeros((batch, 1, h, w), np.float32)
    mask[:, :, h // 4 : 3 * h // 4, w // 8 : w // 2] = 1
    return {
        "latent": rng.randn(batch, 4, h // 8, w // 8).astype(np.float32),
        "image": (rng.rand(batch, 3, h, w) * 2 - 1).astype(np.float32),
        "mask": mask,
    }


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


# --------------------------------------------------------------------------------------------------
# Pipelines: UNet 9 / 4 channels, CLIP text encoder and tokenizer, first stage


@functools.lru_cache(maxsize=None)
def _pipe(path: str, kind: str, decoder: str | None) -> Any:
    cls = InpaintPipeline if kind == "inpaint" else Txt2ImgPipeline
    return cls.from_diffusers(path, decoder=decoder, precision="fp32")  # the parity bounds are fp32's


def pipe(folders: dict[str, Any], kind: str) -> Any:
    root = folders["root"]
    decoder = str(root / "asym-base") if kind == "inpaint" else None
    return _pipe(str(root / f"sd-{kind}"), kind, decoder)


@pytest.mark.parametrize("kind", ["inpaint", "txt2img"])
def test_pipeline_folder_unet_matches_the_saved_diffusers_unet(folders, kind):
    p = pipe(folders, kind)
    spec = folders[kind]["spec"].unet
    assert p.unet.in_channels == (9 if kind == "inpaint" else 4)
    x, ts, context = unet_inputs(spec)
    assert_close(p.unet(x, ts, context), reference_eps(folders[kind]["unet"], x, ts, context))


@pytest.mark.parametrize("kind", ["inpaint", "txt2img"])
def test_pipeline_folder_text_encoder_matches_the_saved_transformers_model(folders, kind):
    p = pipe(folders, kind)
    ids = np.random.default_rng(1).integers(0, 49408, (2, 77))
    with torch.inference_mode():
        want = folders[kind]["text"](input_ids=t(ids)).last_hidden_state
    assert_close(p.text_encoder.encode_ids(ids), want)


def test_tokenizer_folder_gives_the_ids_of_transformers_clip_tokenizer(folders):
    import transformers

    prompts = ["", "a photograph of an astronaut riding a horse", "it's 1999!!! " * 30]
    hf = transformers.CLIPTokenizer.from_pretrained(folders["root"] / "sd-inpaint" / "tokenizer")
    want = hf(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    hf_pad = want.copy()
    hf_pad[hf_pad == hf.pad_token_id] = 49407  # SD pads with 49407 (SPEC §1.4)
    np.testing.assert_array_equal(pipe(folders, "inpaint").tokenizer(prompts), hf_pad)


def test_inpainting_folder_vae_encoder_matches_diffusers_autoencoderkl(folders):
    image = image_inputs(2)["image"]
    mean, logvar = pipe(folders, "inpaint").encoder.posterior(image)
    want_mean, want_logvar = ref.diffusers_posterior(folders["inpaint"]["vae"], t(image))
    assert_close(mean, want_mean)
    assert_close(logvar, want_logvar)


def test_txt2img_folder_without_decoder_decodes_with_sd_vae_decoder(folders):
    x = image_inputs()
    got = pipe(folders, "txt2img").decoder.decode(x["latent"])
    assert_close(got, ref.diffusers_decode(folders["txt2img"]["vae"], t(x["latent"])))


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_bin_weight_files_are_read_through_the_restricted_unpickler(folders, tmp_path):
    assert (folders["root"] / "sd-txt2img" / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert (folders["root"] / "sd-txt2img" / "text_encoder" / "pytorch_model.bin").is_file()
    folder = _copy(folders, "sd-txt2img", tmp_path)
    torch.save({"conv_in.weight": torch.zeros(1), "x": _Payload()}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(checkpoint.CheckpointError, match="system"):
        diffusers_io.read_pipeline(folder)


def test_sharded_weights_with_an_index_file_are_read(folders, tmp_path):
    folder = _copy(folders, "sd-txt2img", tmp_path)
    shutil.rmtree(folder / "unet")
    folders["txt2img"]["unet"].save_pretrained(folder / "unet", max_shard_size="100KB")
    assert len(list((folder / "unet").glob("*.safetensors"))) > 1
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    p = Txt2ImgPipeline.from_diffusers(folder, precision="fp32")
    x, ts, context = unet_inputs(folders["txt2img"]["spec"].unet, seed=6)
    assert_close(p.unet(x, ts, context), reference_eps(folders["txt2img"]["unet"], x, ts, context))


def test_diffusion_spec_is_the_shipped_tiny_config(folders):
    for kind in ("inpaint", "txt2img"):
        assert pipe(folders, kind).diffusion_spec == folders[kind]["spec"]


def test_load_diffusers_returns_the_pipeline_of_the_unet_kind(folders):
    root = folders["root"]
    p = asymvq.load_diffusers(root / "sd-inpaint", decoder=root / "asym-large")
    assert isinstance(p, InpaintPipeline) and p.decoder_spec.decoder.variant == "large"
    assert isinstance(asymvq.load_diffusers(root / "sd-txt2img"), Txt2ImgPipeline)
    assert isinstance(asymvq.load_diffusers(root / "asym-large2"), Autoencoder)


def test_inpainting_pipeline_from_folder_runs_like_the_one_from_original_files(folders, tmp_path):
    """The folder's tensors written under the original names + the tiny YAMLs give identical images."""
    root = folders["root"]
    p = pipe(folders, "inpaint")
    sd = tmp_path / "sd.safetensors"
    dec = tmp_path / "dec.safetensors"
    model = diffusers_io.read_pipeline(root / "sd-inpaint")
    checkpoint.save_safetensors(sd, {k: np.ascontiguousarray(v) for k, v in model.weights().items()})
    dspec, dweights = diffusers_io.read_decoder(root / "asym-base", condition=True)
    checkpoint.save_safetensors(dec, {k: np.ascontiguousarray(v) for k, v in dweights.items()})
    orig = InpaintPipeline.from_original(
        config.packaged_tiny_config("v1-inpainting-inference.yaml"),
        sd,
        config.packaged_tiny_config("autoencoder_kl_32x32x4.yaml"),
        dec,
        vocab=clip_vocab.BPE_GZ,
        precision="fp32",
    )
    x = image_inputs(1, 64, 64, seed=3)
    kw = dict(steps=2, progress=False)
    a = p(x["image"], x["mask"], **kw)
    b = orig(x["image"], x["mask"], **kw)
    np.testing.assert_array_equal(a.arrays, b.arrays)


# --------------------------------------------------------------------------------------------------
# VAE folders


@pytest.mark.parametrize("size", ["base", "large", "large2"])
def test_asymmetric_folder_decodes_like_diffusers_with_condition(folders, size):
    x = image_inputs()
    ae = Autoencoder.from_diffusers(folders["root"] / f"asym-{size}")
    assert ae.conditional and ae.decoder_spec.decoder.variant == size
    want = ref.diffusers_decode(folders[f"asym-{size}"], t(x["latent"]), t(x["image"]), t(x["mask"]))
    assert_close(ae.decode(x["latent"], x["image"], x["mask"]), want)


def test_asymmetric_folder_without_condition_decodes_like_diffusers_without_image(folders):
    x = image_inputs(seed=1)
    ae = Autoencoder.from_diffusers(folders["root"] / "asym-large", condition=False, parts="decoder")
    assert not ae.conditional and not ae.has_encoder
    assert_close(ae.decode(x["latent"]), ref.diffusers_decode(folders["asym-large"], t(x["latent"])))


def test_asymmetric_folder_encoder_matches_diffusers(folders):
    image = image_inputs(seed=2)["image"]
    mean, logvar = Autoencoder.from_diffusers(folders["root"] / "asym-large2", parts="encoder").posterior(image)
    want_mean, want_logvar = ref.diffusers_posterior(folders["asym-large2"], t(image))
    assert_close(mean, want_mean)
    assert_close(logvar, want_logvar)


def test_autoencoderkl_folder_gives_sd_encoder_and_decoder_without_condition(folders):
    x = image_inputs(seed=4)
    ae = Autoencoder.from_diffusers(folders["root"] / "sd-inpaint" / "vae")
    assert ae.has_encoder and not ae.conditional
    model = folders["inpaint"]["vae"]
    assert_close(ae.decode(x["latent"]), ref.diffusers_decode(model, t(x["latent"])))
    assert_close(ae.posterior(x["image"])[0], ref.diffusers_posterior(model, t(x["image"]))[0])


# --------------------------------------------------------------------------------------------------
# Conversion of a folder to one file


def test_convert_of_a_pipeline_folder_runs_like_the_folder(folders, tmp_path):
    root = folders["root"]
    out = tmp_path / "inpaint.safetensors"
    convert.convert(None, root / "sd-inpaint", out, decoder_ckpt=root / "asym-base")
    meta = convert.read_metadata(out)
    assert meta.kind == "inpaint" and meta.vocab is not None and meta.decoder.decoder.variant == "base"
    a = InpaintPipeline.from_file(out, precision="fp32")
    b = pipe(folders, "inpaint")
    x, ts, context = unet_inputs(b.unet.spec)
    np.testing.assert_array_equal(a.unet(x, ts, context), b.unet(x, ts, context))
    y = image_inputs()
    np.testing.assert_array_equal(
        a.decoder.decode(y["latent"], y["image"], y["mask"]), b.decoder.decode(y["latent"], y["image"], y["mask"])
    )


def test_convert_of_a_txt2img_folder_keeps_its_sd_decoder(folders, tmp_path):
    out = tmp_path / "t2i.safetensors"
    convert.convert(None, folders["root"] / "sd-txt2img", out)
    a = Txt2ImgPipeline.from_file(out, precision="fp32")
    x = image_inputs(seed=5)
    np.testing.assert_array_equal(a.decoder.decode(x["latent"]), pipe(folders, "txt2img").decoder.decode(x["latent"]))


def test_convert_command_line_takes_a_folder_without_config(folders, tmp_path, capsys):
    out = tmp_path / "dec.safetensors"
    assert convert.main(["--ckpt", str(folders["root"] / "asym-large"), "-o", str(out), "-q"]) == 0
    assert convert.read_metadata(out).kind == "decoder"


# --------------------------------------------------------------------------------------------------
# Refusals


def _copy(folders: dict[str, Any], name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(folders["root"] / name, dst)
    return dst


def _edit(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_sd2_style_linear_projection_unet_is_refused(folders, tmp_path):
    folder = _copy(folders, "sd-txt2img", tmp_path)
    _edit(folder / "unet" / "config.json", use_linear_projection=True)
    with pytest.raises(diffusers_io.DiffusersError, match="use_linear_projection.*not supported"):
        Txt2ImgPipeline.from_diffusers(folder)


def test_sdxl_added_embeddings_are_refused(folders, tmp_path):
    folder = _copy(folders, "sd-txt2img", tmp_path)
    _edit(folder / "unet" / "config.json", addition_embed_type="text_time")
    with pytest.raises(diffusers_io.DiffusersError, match="addition_embed_type"):
        asymvq.load_diffusers(folder)


def test_openclip_text_encoder_is_refused(folders, tmp_path):
    folder = _copy(folders, "sd-txt2img", tmp_path)
    _edit(folder / "text_encoder" / "config.json", hidden_act="gelu")
    with pytest.raises(diffusers_io.DiffusersError, match="hidden_act.*quick_gelu"):
        asymvq.load_diffusers(folder)


def test_v_prediction_scheduler_is_refused(folders, tmp_path):
    folder = _copy(folders, "sd-txt2img", tmp_path)
    _edit(folder / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
    with pytest.raises(diffusers_io.DiffusersError, match="prediction_type"):
        asymvq.load_diffusers(folder)


def test_lora_folder_is_refused_with_what_to_do(tmp_path):
    checkpoint.save_safetensors(
        tmp_path / "pytorch_lora_weights.safetensors",
        {"unet.down_blocks.0.attentions.0.lora.down.weight": np.zeros((4, 32), np.float32)},
    )
    with pytest.raises(diffusers_io.DiffusersError, match="LoRA.*fuse"):
        asymvq.load_diffusers(tmp_path)


def test_asymmetric_layout_matching_no_variant_is_refused(folders, tmp_path):
    folder = _copy(folders, "asym-large", tmp_path)
    _edit(folder / "config.json", layers_per_up_block=5)
    with pytest.raises(diffusers_io.DiffusersError, match="none of the asymmetric decoders"):
        Autoencoder.from_diffusers(folder)


def test_inpainting_with_the_folder_sd_vae_asks_for_an_asymmetric_decoder(folders):
    with pytest.raises(diffusers_io.DiffusersError, match="AutoencoderKL.*no condition.*AsymmetricAutoencoderKL"):
        InpaintPipeline.from_diffusers(folders["root"] / "sd-inpaint")


def test_a_txt2img_folder_is_not_an_inpainting_model(folders):
    with pytest.raises(diffusers_io.DiffusersError, match="text-to-image.*not an inpainting"):
        InpaintPipeline.from_diffusers(folders["root"] / "sd-txt2img", decoder=folders["root"] / "asym-base")


def test_missing_and_extra_tensors_are_all_named(folders, tmp_path):
    folder = _copy(folders, "asym-base", tmp_path)
    weights = checkpoint.load(folder / "diffusion_pytorch_model.safetensors")
    changed = {k: np.array(v) for k, v in weights.items() if k != "decoder.conv_out.bias"}
    changed["decoder.extra.weight"] = np.zeros(3, np.float32)
    checkpoint.save_safetensors(folder / "diffusion_pytorch_model.safetensors", changed)
    with pytest.raises(tables.WeightsError) as err:
        Autoencoder.from_diffusers(folder)
    assert "decoder.extra.weight" in str(err.value) and "missing: decoder.conv_out.bias" in str(err.value)


def test_a_folder_without_weights_says_what_it_looked_for(folders, tmp_path):
    folder = _copy(folders, "asym-base", tmp_path)
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.fp16.safetensors")
    with pytest.raises(diffusers_io.DiffusersError, match="no weights.*fp16"):
        Autoencoder.from_diffusers(folder)
    assert Autoencoder.from_diffusers(folder, variant="fp16").conditional


# --------------------------------------------------------------------------------------------------
# Real widths (SD 1.x sizes: 860 M-parameter UNet, CLIP ViT-L/14, SD's VAE, the 1.5x and 2x decoders)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["inpaint", "txt2img"])
def test_real_width_pipeline_folder_matches_diffusers_and_transformers(tmp_path, kind):
    import gc

    saved = write_pipeline(tmp_path / kind, kind, tiny=False)
    try:
        p = (InpaintPipeline if kind == "inpaint" else Txt2ImgPipeline).from_diffusers(
            tmp_path / kind, decoder=None if kind == "txt2img" else _real_asymmetric_folder(tmp_path), precision="fp32"
        )
        spec = saved["spec"]
        assert p.diffusion_spec == spec and spec.unet.model_channels == 320
        rng = np.random.default_rng(7)
        x = rng.standard_normal((2, spec.unet.in_channels, 32, 32), dtype=np.float32)
        ts, context = np.array([981, 21]), rng.standard_normal((2, 77, 768), dtype=np.float32)
        errors = {"unet": assert_close(p.unet(x, ts, context), reference_eps(saved["unet"], x, ts, context))}
        ids = rng.integers(0, 49408, (2, 77))
        with torch.inference_mode():
            want = saved["text"](input_ids=t(ids)).last_hidden_state
        errors["text"] = assert_close(p.text_encoder.encode_ids(ids), want)
        y = image_inputs(1, 256, 256, seed=8)
        if kind == "inpaint":
            mean = p.encoder.posterior(y["image"])[0]
            errors["vae encoder"] = assert_close(mean, ref.diffusers_posterior(saved["vae"], t(y["image"]))[0])
        else:
            errors["vae decoder"] = assert_close(
                p.decoder.decode(y["latent"]), ref.diffusers_decode(saved["vae"], t(y["latent"]))
            )
        print(f"real-width {kind} max error / std:", {k: f"{v:.2e}" for k, v in errors.items()})
    finally:
        del saved
        gc.collect()
        shutil.rmtree(tmp_path / kind, ignore_errors=True)


def _real_asymmetric_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "asym-real-base"
    if not folder.exists():
        asymmetric_model("base", tiny=False).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("size", ["base", "large", "large2"])
def test_real_width_asymmetric_folder_decodes_like_diffusers(tmp_path, size):
    model = asymmetric_model(size, tiny=False)
    model.save_pretrained(tmp_path / size)
    ae = Autoencoder.from_diffusers(tmp_path / size, parts="decoder")
    assert ae.decoder_spec.decoder.variant == size and ae.decoder_spec == decoder_spec(size, tiny=False)
    x = image_inputs(1, 128, 128, seed=9)
    want = ref.diffusers_decode(model, t(x["latent"]), t(x["image"]), t(x["mask"]))
    err = assert_close(ae.decode(x["latent"], x["image"], x["mask"]), want)
    print(f"real-width {size} decoder max error / std: {err:.2e}")
