"""Single-file checkpoints without a YAML (asymvq.infer): the config is chosen from the tensors.

Checkpoints are the random-weight fixtures (tests/fixtures.py: the real key names and shapes, tiny
widths here; the real widths in the slow test at the end).  A checkpoint loaded without its config must
compute exactly what it computes with its config: same spec, same weights, bit-identical outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures import CONFIGS, fixture_spec, state_dict_items, write_checkpoint
from reference import clip_vocab

from asymvq import checkpoint, config, convert, inpaint_st, tables, txt2img
from asymvq.infer import InferenceError, infer_config
from asymvq.pipelines import InpaintPipeline, Txt2ImgPipeline

VOCAB = clip_vocab.BPE_GZ
WOC = {
    "decoder-base": "autoencoder_kl_woc_32x32x4.yaml",
    "decoder-large": "autoencoder_kl_woc_32x32x4_large.yaml",
    "decoder-large2": "autoencoder_kl_woc_32x32x4_large2.yaml",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("infer")
    out = {}
    for which in CONFIGS:
        out[which] = write_checkpoint(d / f"{which}.ckpt", which)
        out[which + ".safetensors"] = write_checkpoint(d / f"{which}.safetensors", which)
    return out


def numpy_state(which: str) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in state_dict_items(which)}


# --------------------------------------------------------------------------------------------------
# Which config


@pytest.mark.parametrize("fmt", ["", ".safetensors"])
@pytest.mark.parametrize("which", list(CONFIGS))
def test_each_checkpoint_gets_the_config_it_was_written_from(files, which, fmt):
    found = infer_config(files[which + fmt])
    assert found.name == f"tiny/{CONFIGS[which]}"
    assert found.spec == fixture_spec(which)


def test_nine_input_channels_mean_inpainting_and_four_text_to_image(files):
    assert infer_config(files["sd15-inpaint"], "diffusion").spec.kind == "inpaint"
    assert infer_config(files["sd15-txt2img"], "diffusion").spec.kind == "txt2img"
    assert "9-channel inpainting UNet" in infer_config(files["sd15-inpaint"]).summary


@pytest.mark.parametrize("which", ["decoder-base", "decoder-large", "decoder-large2"])
def test_a_decoder_used_without_condition_gets_the_wocondition_config(files, which):
    found = infer_config(files[which], "decoder_wocondition")
    assert found.name == f"tiny/{WOC[which]}" and not found.spec.decoder.conditional
    assert found.spec.decoder.variant == which.split("-")[1]


def test_the_decoder_variant_names_its_size(files):
    assert "asymmetric 1.5x decoder" in infer_config(files["decoder-large"]).summary
    assert "asymmetric 2x decoder" in infer_config(files["decoder-large2"]).summary


def sd_vanilla_decoder() -> dict[str, np.ndarray]:
    """SD's VAE decoder alone, under the decoder-checkpoint names (no condition encoder)."""
    spec = fixture_spec("sd15-inpaint")
    names = tables.decoder_tensors(spec.first_stage, prefix="first_stage_model.")
    state = numpy_state("sd15-inpaint")
    return {name[len("first_stage_model.") :]: state[name] for name in names}


def test_sd_vanilla_decoder_runs_without_condition(tmp_path):
    found = infer_config(sd_vanilla_decoder(), "decoder_wocondition")
    assert found.name == "SD's VAE of tiny/v1-inpainting-inference.yaml"
    assert "SD's VAE decoder without condition encoder" in found.summary
    assert found.spec.decoder == fixture_spec("sd15-inpaint").first_stage.decoder


def test_sd_vanilla_decoder_is_refused_for_inpainting_with_the_reason():
    with pytest.raises(InferenceError, match="plain VAE decoder.*no condition encoder.*inpainting needs"):
        infer_config(sd_vanilla_decoder(), "decoder")


def test_the_wrong_kind_of_model_names_what_was_found(files):
    with pytest.raises(InferenceError) as err:
        infer_config(files["sd15-txt2img"], "inpaint")
    message = str(err.value)
    assert "inpainting model (9-channel UNet)" in message and "conv_in [32, 4, 3, 3] (4 input channels" in message


def test_an_unknown_decoder_layout_is_refused_with_its_shapes():
    state = numpy_state("decoder-large")
    state = {k: v for k, v in state.items() if not k.startswith("decoder.up.0.block.2.")}  # one block fewer
    with pytest.raises(InferenceError, match=r"no shipped config fits.*4 up levels of 2/3 ResnetBlocks"):
        infer_config(state, "decoder")


def test_an_sd2_sized_unet_is_named_as_such():
    state = numpy_state("sd15-txt2img")
    key = next(k for k in state if k.endswith("attn2.to_k.weight"))
    state[key] = np.zeros((state[key].shape[0], 1024), np.float32)
    with pytest.raises(InferenceError, match="context 1024.*SD 2.x"):
        infer_config(state)


def test_diffusers_names_point_to_from_diffusers():
    with pytest.raises(InferenceError, match="diffusers.*from_diffusers"):
        infer_config(
            {
                "conv_in.weight": np.zeros((32, 4, 3, 3), np.float32),
                "down_blocks.0.resnets.0.conv1.weight": np.zeros((32, 32, 3, 3), np.float32),
            }
        )


def test_a_file_fitting_two_configs_is_ambiguous():
    both = {**numpy_state("sd15-txt2img"), **numpy_state("decoder-base")}
    with pytest.raises(InferenceError, match="fit several configs") as err:
        infer_config(both)
    assert "tiny/v1-t2i-inference.yaml" in str(err.value) and "tiny/autoencoder_kl_32x32x4.yaml" in str(err.value)


def test_the_choice_is_printed_on_stderr(files, capsys):
    infer_config(files["decoder-large"], "decoder", announce=True)
    err = capsys.readouterr().err
    assert err.startswith("asymvq: no config given for ") and "inferred tiny/autoencoder_kl_32x32x4_large.yaml" in err


# --------------------------------------------------------------------------------------------------
# from_original(config=None) and the command lines


def test_inpainting_without_configs_equals_with_its_yamls(files, capsys):
    tiny = config.packaged_tiny_config
    kw = dict(vocab=VOCAB)
    with_yaml = InpaintPipeline.from_original(
        tiny("v1-inpainting-inference.yaml"),
        files["sd15-inpaint"],
        tiny("autoencoder_kl_32x32x4_large.yaml"),
        files["decoder-large"],
        **kw,
    )
    without = InpaintPipeline.from_original(None, files["sd15-inpaint"], None, files["decoder-large"], **kw)
    err = capsys.readouterr().err
    assert "inferred tiny/v1-inpainting-inference.yaml" in err and "inferred tiny/autoencoder_kl_32x32x4_large" in err
    rng = np.random.RandomState(0)
    image = (rng.rand(1, 3, 64, 64) * 2 - 1).astype(np.float32)
    mask = np.zeros((1, 1, 64, 64), np.float32)
    mask[:, :, 16:48, 8:40] = 1
    a = with_yaml(image, mask, steps=2, progress=False)
    b = without(image, mask, steps=2, progress=False)
    np.testing.assert_array_equal(a.arrays, b.arrays)
    assert without.decoder_spec == with_yaml.decoder_spec and without.diffusion_spec == with_yaml.diffusion_spec


def test_txt2img_without_configs_equals_with_its_yamls(files):
    tiny = config.packaged_tiny_config
    with_yaml = Txt2ImgPipeline.from_original(
        tiny("autoencoder_kl_woc_32x32x4_large2.yaml"),
        files["decoder-large2"],
        tiny("v1-t2i-inference.yaml"),
        files["sd15-txt2img"],
        vocab=VOCAB,
    )
    without = Txt2ImgPipeline.from_original(None, files["decoder-large2"], None, files["sd15-txt2img"], vocab=VOCAB)
    a = with_yaml("a cat", height=64, width=64, steps=2, progress=False)
    b = without("a cat", height=64, width=64, steps=2, progress=False)
    np.testing.assert_array_equal(a.arrays, b.arrays)
    assert not without.decoder_spec.decoder.conditional


def test_a_given_config_still_wins_over_inference(files):
    with pytest.raises(ValueError):  # the 1.5x config does not describe the base checkpoint
        InpaintPipeline.from_original(
            None,
            files["sd15-inpaint"],
            config.packaged_tiny_config("autoencoder_kl_32x32x4_large.yaml"),
            files["decoder-base"],
            vocab=VOCAB,
        )


def test_inpaint_st_without_config_flags_infers_them(files, tmp_path, capsys):
    examples = Path(__file__).resolve().parents[2] / "shared" / "data" / "inpainting_examples"
    indir = tmp_path / "in"
    indir.mkdir()
    for name in ("bench2.png", "bench2_mask.png"):
        (indir / name).write_bytes((examples / name).read_bytes())
    argv = [
        "--indir",
        str(indir),
        "--outdir",
        str(tmp_path / "out"),
        "--ckpt_d",
        str(files["sd15-inpaint"]),
        "--ckpt",
        str(files["decoder-base"]),
        "--vocab",
        str(VOCAB),
        "--steps",
        "2",
    ]
    assert inpaint_st.main(argv) == 0
    err = capsys.readouterr().err
    assert "inferred tiny/v1-inpainting-inference.yaml" in err and "inferred tiny/autoencoder_kl_32x32x4.yaml" in err
    assert (tmp_path / "out" / "bench2.png").is_file()


def test_txt2img_refuses_an_unknown_checkpoint_in_one_line(files, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    checkpoint.save_safetensors(bad, {"something.weight": np.zeros(3, np.float32)})
    argv = [
        "--outdir",
        str(tmp_path / "out"),
        "--ckpt",
        str(files["sd15-txt2img"]),
        "--ckpt_c",
        str(bad),
        "--vocab",
        str(VOCAB),
        "--H",
        "64",
        "--W",
        "64",
        "--ddim_steps",
        "2",
    ]
    assert txt2img.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no shipped config fits" in err[-1] and "Traceback" not in "".join(err)


# --------------------------------------------------------------------------------------------------
# convert without --config


def test_convert_without_configs_writes_what_the_yamls_write(files, tmp_path):
    tiny = config.packaged_tiny_config
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    convert.convert(
        tiny("v1-inpainting-inference.yaml"),
        files["sd15-inpaint"],
        a,
        decoder_config=tiny("autoencoder_kl_32x32x4_large.yaml"),
        decoder_ckpt=files["decoder-large"],
    )
    convert.convert(None, files["sd15-inpaint"], b, decoder_ckpt=files["decoder-large"])
    ma, mb = convert.read_metadata(a), convert.read_metadata(b)
    assert ma.spec == mb.spec and ma.decoder == mb.decoder
    ta, tb = checkpoint.load(a), checkpoint.load(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name])


def test_convert_command_line_without_config_prints_the_choice(files, tmp_path, capsys):
    out = tmp_path / "d.safetensors"
    assert convert.main(["--ckpt", str(files["decoder-large2.safetensors"]), "-o", str(out), "-q"]) == 0
    assert "inferred tiny/autoencoder_kl_32x32x4_large2.yaml" in capsys.readouterr().err
    assert convert.read_metadata(out).kind == "decoder"


def test_convert_command_line_refuses_an_unknown_checkpoint_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    checkpoint.save_safetensors(bad, {"something.weight": np.zeros(3, np.float32)})
    assert convert.main(["--ckpt", str(bad), "-o", str(tmp_path / "o.safetensors"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no shipped config fits" in err and not (tmp_path / "o.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# Real widths


def real_width_layout(which: str) -> dict[str, np.ndarray]:
    """The real-width fixture's names, shapes and dtypes, as zero-stride arrays (no memory, no file)."""
    from fixtures import _layout

    dtypes = {"F32": np.float32, "I64": np.int64, "I32": np.int32}
    return {
        name: np.broadcast_to(np.zeros((), dtypes[tag]), shape)
        for name, (tag, shape, _) in _layout(which, False, "float32", False)
    }


@pytest.mark.parametrize("which", list(CONFIGS))
def test_real_width_layouts_get_the_original_configs(which):
    found = infer_config(real_width_layout(which))
    assert found.name == CONFIGS[which] and found.spec == fixture_spec(which, tiny=False)


def test_the_real_sd_vae_decoder_is_the_base_decoder_without_condition():
    spec = fixture_spec("sd15-inpaint", tiny=False)
    layout = real_width_layout("sd15-inpaint")
    names = tables.decoder_tensors(spec.first_stage, prefix="first_stage_model.")
    vae = {name[len("first_stage_model.") :]: layout[name] for name in names}
    assert infer_config(vae, "decoder_wocondition").name == "autoencoder_kl_woc_32x32x4.yaml"
