"""asymvq.config: the original YAML configs (and their tiny stand-ins) parsed into typed specs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from asymvq import config
from asymvq.config import AutoencoderSpec, ConfigError, DiffusionSpec, TextEncoderSpec

ORIGINALS = {
    # file -> (kind or decoder variant, conditional)
    "v1-inpainting-inference.yaml": ("inpaint", None),
    "v1-t2i-inference.yaml": ("txt2img", None),
    "autoencoder_kl_32x32x4.yaml": ("base", True),
    "autoencoder_kl_32x32x4_large.yaml": ("large", True),
    "autoencoder_kl_32x32x4_large2.yaml": ("large2", True),
    "autoencoder_kl_woc_32x32x4.yaml": ("base", False),
    "autoencoder_kl_woc_32x32x4_large.yaml": ("large", False),
    "autoencoder_kl_woc_32x32x4_large2.yaml": ("large2", False),
}


def original(name: str) -> config.Spec:
    return config.load(config.packaged_config(name))


def edited(name: str, edit: Callable[[dict[str, Any]], None], tiny: bool = False) -> str:
    """The YAML text of a shipped config after ``edit`` changed its parsed tree."""
    path = (config.packaged_tiny_config if tiny else config.packaged_config)(name)
    tree = yaml.safe_load(path.read_text())
    edit(tree)
    return yaml.safe_dump(tree)


def unet_params(tree: dict[str, Any]) -> dict[str, Any]:
    return tree["model"]["params"]["unet_config"]["params"]


# ---------------------------------------------------------------------------------------------
# The eight original configs


def test_every_shipped_config_is_one_of_the_eight_originals() -> None:
    assert config.packaged_config_names() == sorted(ORIGINALS)


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_target_class_decides_the_model(name: str) -> None:
    kind, conditional = ORIGINALS[name]
    spec = original(name)
    if conditional is None:
        assert isinstance(spec, DiffusionSpec) and spec.kind == kind
    else:
        assert isinstance(spec, AutoencoderSpec)
        assert (spec.decoder.variant, spec.decoder.conditional) == (kind, conditional)


def test_inpainting_config_is_a_9_channel_hybrid_unet() -> None:
    spec = original("v1-inpainting-inference.yaml")
    assert isinstance(spec, DiffusionSpec)
    assert spec.target == "ldm.models.diffusion.ddpm.LatentInpaintDiffusion"
    assert spec.conditioning_key == "hybrid"
    assert spec.unet == config.UNetSpec(
        in_channels=9,
        out_channels=4,
        model_channels=320,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        attention_resolutions=(4, 2, 1),
        num_heads=8,
        num_head_channels=-1,
        transformer_depth=1,
        context_dim=768,
    )


def test_txt2img_config_is_a_4_channel_crossattn_unet_without_ema() -> None:
    spec = original("v1-t2i-inference.yaml")
    assert isinstance(spec, DiffusionSpec)
    assert (spec.unet.in_channels, spec.conditioning_key, spec.use_ema) == (4, "crossattn", False)


def test_diffusion_schedule_and_scale_come_from_the_config() -> None:
    spec = original("v1-inpainting-inference.yaml")
    assert isinstance(spec, DiffusionSpec)
    assert (spec.linear_start, spec.linear_end, spec.timesteps, spec.scale_factor) == (0.00085, 0.012, 1000, 0.18215)


def test_unet_heads_are_eight_with_width_dependent_head_dim() -> None:
    unet = original("v1-t2i-inference.yaml").unet  # type: ignore[union-attr]
    assert [unet.heads(w) for w in (320, 640, 1280)] == [(8, 40), (8, 80), (8, 160)]


def test_frozen_clip_embedder_without_params_is_clip_vit_l14() -> None:
    spec = original("v1-t2i-inference.yaml")
    assert isinstance(spec, DiffusionSpec)
    assert spec.text_encoder == TextEncoderSpec(49408, 768, 12, 12, 3072, 77, 1e-5)


def test_first_stage_of_a_diffusion_config_is_sds_vanilla_vae() -> None:
    spec = original("v1-inpainting-inference.yaml")
    assert isinstance(spec, DiffusionSpec)
    first = spec.first_stage
    assert first.encoder == config.EncoderSpec(3, 128, (1, 2, 4, 4), 2, 4, True)
    assert (first.embed_dim, first.decoder.ch, first.decoder.blocks_per_level) == (4, 128, 3)
    assert first.decoder.conditional is False


@pytest.mark.parametrize(
    "name, ch, blocks, widths",
    [
        ("autoencoder_kl_32x32x4.yaml", 128, 3, (128, 256, 512, 512)),
        ("autoencoder_kl_32x32x4_large.yaml", 192, 4, (192, 384, 768, 768)),
        ("autoencoder_kl_32x32x4_large2.yaml", 256, 6, (256, 512, 1024, 1024)),
    ],
)
def test_decoder_width_and_depth_come_from_the_class_not_ddconfig(
    name: str, ch: int, blocks: int, widths: tuple
) -> None:
    spec = original(name)
    assert isinstance(spec, AutoencoderSpec)
    assert (spec.decoder.ch, spec.decoder.blocks_per_level, spec.decoder.widths) == (ch, blocks, widths)
    assert spec.decoder.cond_channels == widths[:3]
    assert spec.encoder.ch == 128  # the encoder keeps ddconfig's width


@pytest.mark.parametrize("size", ["", "_large", "_large2"])
def test_wocondition_decoder_has_the_dimensions_of_its_conditional_twin(size: str) -> None:
    cond = original(f"autoencoder_kl_32x32x4{size}.yaml")
    woc = original(f"autoencoder_kl_woc_32x32x4{size}.yaml")
    assert isinstance(cond, AutoencoderSpec) and isinstance(woc, AutoencoderSpec)
    assert dataclasses.replace(woc.decoder, conditional=True) == cond.decoder


def test_specs_are_frozen() -> None:
    spec = original("autoencoder_kl_32x32x4.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.embed_dim = 8  # type: ignore[misc]


def test_spec_records_source_target_and_yaml_text() -> None:
    path = config.packaged_config("autoencoder_kl_woc_32x32x4_large2")
    spec = config.load(path)
    assert spec.source == str(path)
    assert spec.target == "ldm.models.autoencoder_large2.AutoencoderKL_wocondition"
    assert spec.yaml_text == path.read_text()


def test_load_text_of_the_embedded_yaml_gives_the_same_spec() -> None:
    spec = original("v1-inpainting-inference.yaml")
    again = config.load_text(spec.yaml_text, source="model.safetensors:asymvq.config")
    assert again == spec  # the source is provenance, not part of the model
    assert again.source == "model.safetensors:asymvq.config"


def test_load_accepts_str_and_pathlike() -> None:
    path = config.packaged_config("v1-t2i-inference.yaml")
    assert config.load(str(path)) == config.load(Path(path))


def test_packaged_config_accepts_the_name_without_suffix() -> None:
    assert config.packaged_config("v1-t2i-inference") == config.packaged_config("v1-t2i-inference.yaml")


def test_unknown_packaged_config_lists_the_available_ones() -> None:
    with pytest.raises(FileNotFoundError, match="v1-t2i-inference.yaml"):
        config.packaged_config("v2-inference")


# ---------------------------------------------------------------------------------------------
# Errors name the problem, the key path and the file


def test_unknown_target_is_rejected_by_name() -> None:
    text = edited("autoencoder_kl_32x32x4.yaml", lambda t: t["model"].update(target="ldm.models.vqgan.VQModel"))
    with pytest.raises(
        ConfigError, match=r"mine\.yaml: model\.target: unknown model class 'ldm\.models\.vqgan\.VQModel'"
    ):
        config.load_text(text, source="mine.yaml")


def test_missing_field_names_its_key_path_and_file() -> None:
    text = edited("v1-inpainting-inference.yaml", lambda t: unet_params(t).pop("in_channels"))
    with pytest.raises(ConfigError, match=r"cfg\.yaml: model\.params\.unet_config\.params\.in_channels: missing"):
        config.load_text(text, source="cfg.yaml")


def test_ill_typed_field_names_its_key_path() -> None:
    text = edited("v1-t2i-inference.yaml", lambda t: unet_params(t).update(channel_mult="1,2,4,4"))
    with pytest.raises(ConfigError, match=r"unet_config\.params\.channel_mult: expected a non-empty list of integers"):
        config.load_text(text)


def test_boolean_is_not_accepted_as_an_integer() -> None:
    text = edited("v1-t2i-inference.yaml", lambda t: unet_params(t).update(num_res_blocks=True))
    with pytest.raises(ConfigError, match="num_res_blocks: expected an integer"):
        config.load_text(text)


def test_missing_section_names_its_key_path() -> None:
    text = edited("autoencoder_kl_32x32x4.yaml", lambda t: t["model"]["params"].pop("ddconfig"))
    with pytest.raises(ConfigError, match=r"model\.params\.ddconfig: missing"):
        config.load_text(text)


def test_float_written_without_a_dot_is_accepted_as_omegaconf_does() -> None:
    text = edited("v1-t2i-inference.yaml", lambda t: t["model"]["params"].update(linear_start="8.5e-4"))
    assert config.load_text(text).linear_start == 8.5e-4  # type: ignore[union-attr]


def test_yaml_python_tags_are_not_executed(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    text = f"model: !!python/object/apply:os.system ['touch {sentinel}']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load_text(text)
    assert not sentinel.exists()


def test_top_level_must_be_a_mapping_with_a_model() -> None:
    with pytest.raises(ConfigError, match=r"x\.yaml: model: missing"):
        config.load_text("data: {}\n", source="x.yaml")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: cannot read config"):
        config.load(tmp_path / "nope.yaml")


def test_inpainting_unet_must_take_nine_channels() -> None:
    text = edited("v1-inpainting-inference.yaml", lambda t: unet_params(t).update(in_channels=4))
    with pytest.raises(ConfigError, match=r"in_channels: 4 does not fit inpaint: expected 9"):
        config.load_text(text)


def test_conditioning_key_must_match_the_class() -> None:
    text = edited("v1-inpainting-inference.yaml", lambda t: t["model"]["params"].update(conditioning_key="concat"))
    with pytest.raises(ConfigError, match=r"conditioning_key: 'concat' is not supported"):
        config.load_text(text)


def test_context_dim_must_match_the_text_encoder_width() -> None:
    text = edited("v1-t2i-inference.yaml", lambda t: unet_params(t).update(context_dim=1024))
    with pytest.raises(ConfigError, match="context_dim: 1024 differs from the text encoder width 768"):
        config.load_text(text)


def test_unet_without_spatial_transformer_is_unsupported() -> None:
    text = edited("v1-t2i-inference.yaml", lambda t: unet_params(t).pop("use_spatial_transformer"))
    with pytest.raises(ConfigError, match="use_spatial_transformer: False is not supported"):
        config.load_text(text)


def test_heads_must_divide_every_width() -> None:
    text = edited("v1-t2i-inference.yaml", lambda t: unet_params(t).update(num_heads=3))
    with pytest.raises(ConfigError, match="num_heads: a width of 320 channels does not split into 3 heads"):
        config.load_text(text)


def test_widths_must_be_multiples_of_the_32_groupnorm_groups() -> None:
    text = edited("v1-t2i-inference.yaml", lambda t: unet_params(t).update(model_channels=48))
    with pytest.raises(ConfigError, match="multiples of 32"):
        config.load_text(text)


def test_first_stage_must_be_the_base_autoencoder() -> None:
    def edit(t: dict[str, Any]) -> None:
        t["model"]["params"]["first_stage_config"]["target"] = "ldm.models.autoencoder_large.AutoencoderKL"

    with pytest.raises(ConfigError, match=r"first_stage_config\.target: .* must be the base autoencoder"):
        config.load_text(edited("v1-inpainting-inference.yaml", edit))


def test_other_clip_versions_are_unsupported() -> None:
    def edit(t: dict[str, Any]) -> None:
        t["model"]["params"]["cond_stage_config"]["params"] = {"version": "openai/clip-vit-base-patch32"}

    with pytest.raises(ConfigError, match=r"cond_stage_config\.params\.version: 'openai/clip-vit-base-patch32'"):
        config.load_text(edited("v1-t2i-inference.yaml", edit))


def test_attention_in_the_vae_levels_is_unsupported() -> None:
    def edit(t: dict[str, Any]) -> None:
        t["model"]["params"]["ddconfig"]["attn_resolutions"] = [32]

    with pytest.raises(ConfigError, match=r"ddconfig\.attn_resolutions"):
        config.load_text(edited("autoencoder_kl_32x32x4.yaml", edit))


# ---------------------------------------------------------------------------------------------
# Extensions and the tiny configs


def test_tiny_configs_have_the_original_file_names() -> None:
    assert config.packaged_config_names(tiny=True) == sorted(ORIGINALS)


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_tiny_config_builds_the_same_kind_of_model(name: str) -> None:
    tiny = config.load(config.packaged_tiny_config(name))
    real = original(name)
    assert (type(tiny), tiny.target) == (type(real), real.target)
    if isinstance(tiny, AutoencoderSpec):
        assert (tiny.decoder.variant, tiny.decoder.conditional) == (real.decoder.variant, real.decoder.conditional)  # type: ignore[union-attr]
    else:
        assert (tiny.kind, tiny.conditioning_key) == (real.kind, real.conditioning_key)  # type: ignore[union-attr]


def test_tiny_decoders_grow_like_the_real_ones() -> None:
    base, large, large2 = (
        config.load(config.packaged_tiny_config(f"autoencoder_kl_32x32x4{s}")).decoder  # type: ignore[union-attr]
        for s in ("", "_large", "_large2")
    )
    assert base.ch < large.ch < large2.ch
    assert base.blocks_per_level < large.blocks_per_level < large2.blocks_per_level
    assert all(w % 32 == 0 for d in (base, large, large2) for w in d.widths)


def test_tiny_text_encoder_comes_from_the_extension_block() -> None:
    spec = config.load(config.packaged_tiny_config("v1-inpainting-inference"))
    assert isinstance(spec, DiffusionSpec)
    assert spec.text_encoder == TextEncoderSpec(vocab_size=49408, width=64, layers=2, heads=4, mlp=128)
    assert spec.unet.context_dim == 64


def test_decoder_override_sets_width_and_depth() -> None:
    def edit(t: dict[str, Any]) -> None:
        t["model"]["params"]["asymvq_decoder"] = {"ch": 64, "blocks_per_level": 2}

    spec = config.load_text(edited("autoencoder_kl_32x32x4_large2.yaml", edit))
    assert isinstance(spec, AutoencoderSpec)
    assert (spec.decoder.widths, spec.decoder.blocks_per_level) == ((64, 128, 256, 256), 2)
    assert spec.decoder.cond_channels == (64, 128, 256)


def test_decoder_override_rejects_condition_widths_that_cannot_merge() -> None:
    def edit(t: dict[str, Any]) -> None:
        t["model"]["params"]["asymvq_decoder"]["cond_channels"] = [32, 64, 128]

    with pytest.raises(
        ConfigError, match=r"asymvq_decoder\.cond_channels: \[32, 64, 128\] must equal .* \[32, 64, 64\]"
    ):
        config.load_text(edited("autoencoder_kl_32x32x4.yaml", edit, tiny=True))


def test_decoder_override_rejects_unknown_keys() -> None:
    def edit(t: dict[str, Any]) -> None:
        t["model"]["params"]["asymvq_decoder"]["ch_mult"] = [1, 1, 1, 1]

    with pytest.raises(ConfigError, match=r"asymvq_decoder: unknown key\(s\) ch_mult"):
        config.load_text(edited("autoencoder_kl_32x32x4.yaml", edit, tiny=True))


def test_decoder_override_width_must_be_a_multiple_of_32() -> None:
    def edit(t: dict[str, Any]) -> None:
        t["model"]["params"]["asymvq_decoder"]["ch"] = 48
        del t["model"]["params"]["asymvq_decoder"]["cond_channels"]

    with pytest.raises(ConfigError, match=r"asymvq_decoder\.ch: 48 is not a multiple of 32"):
        config.load_text(edited("autoencoder_kl_32x32x4_large.yaml", edit, tiny=True))


def test_text_model_override_heads_must_divide_the_width() -> None:
    def edit(t: dict[str, Any]) -> None:
        t["model"]["params"]["cond_stage_config"]["params"]["asymvq_text_model"]["heads"] = 5

    with pytest.raises(ConfigError, match=r"asymvq_text_model\.heads: width 64 does not split into 5 heads"):
        config.load_text(edited("v1-t2i-inference.yaml", edit, tiny=True))


def test_text_model_override_rejects_unknown_keys() -> None:
    def edit(t: dict[str, Any]) -> None:
        t["model"]["params"]["cond_stage_config"]["params"]["asymvq_text_model"]["activation"] = "gelu"

    with pytest.raises(ConfigError, match=r"asymvq_text_model: unknown key\(s\) activation"):
        config.load_text(edited("v1-t2i-inference.yaml", edit, tiny=True))


# ---------------------------------------------------------------------------------------------
# Hostile files: bounded work and short messages whatever the YAML holds


def alias_bomb(levels: int) -> str:
    """9 ** levels strings from a few hundred bytes of anchors and aliases, echoed by an error."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel: *a{levels - 1}\n"


def test_alias_bomb_is_refused_before_anything_expands_it() -> None:
    text = alias_bomb(9)  # 387 million strings
    assert len(text) < 1000
    with pytest.raises(
        ConfigError,
        match=r"^bomb.yaml: the YAML expands to more than 100000 nodes once its "
        "aliases are resolved",
    ):
        config.load_text(text, source="bomb.yaml")


def test_aliases_that_expand_to_a_few_nodes_are_read_as_usual() -> None:
    text = alias_bomb(2)  # 81 strings: an ordinary error, with the value cut short
    with pytest.raises(ConfigError, match=r"^small.yaml: model: expected a mapping, got list \[\[") as err:
        config.load_text(text, source="small.yaml")
    assert len(str(err.value)) < 200


def test_shared_anchor_in_a_real_config_is_accepted() -> None:
    text = config.packaged_tiny_config("autoencoder_kl_32x32x4").read_text()
    anchored = text.replace("model:", "shared: &mult [1, 2, 2, 2]\nmodel:", 1)
    anchored = anchored.replace("ch_mult: [ 1,2,2,2 ]", "ch_mult: *mult")
    assert "*mult" in anchored
    assert config.load_text(anchored) == config.load_text(text)


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="alias refers to a node that contains it"):
        config.load_text("model: &m {target: x, params: *m}\n", source="loop.yaml")


@pytest.mark.parametrize(
    "value",
    ["x" * 100_000, list(range(50_000)), {"k" * 10_000: "v" * 10_000}],
    ids=["long string", "long list", "long key and value"],
)
def test_values_echoed_in_errors_are_cut_to_a_short_excerpt(value: Any) -> None:
    text = edited("v1-inpainting-inference.yaml", lambda t: unet_params(t).__setitem__("in_channels", value))
    with pytest.raises(ConfigError, match="in_channels: expected an integer >= 1, got ") as err:
        config.load_text(text, source="long.yaml")
    assert len(str(err.value)) < 250


def test_many_unknown_keys_are_listed_briefly() -> None:
    def add_keys(tree: dict[str, Any]) -> None:
        tree["model"]["params"]["asymvq_decoder"] = {f"key{i:05d}" + "x" * 100: i for i in range(5000)}

    with pytest.raises(ConfigError, match="unknown key") as err:
        config.load_text(edited("autoencoder_kl_32x32x4.yaml", add_keys, tiny=True), source="keys.yaml")
    assert "and 4990 more" in str(err.value) and len(str(err.value)) < 1200


def test_config_file_larger_than_1_mib_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"huge.yaml: 1048577 characters is too large for a config"):
        config.load(path)


def test_alias_bomb_file_is_refused_in_a_memory_limited_child(tmp_path: Path) -> None:
    import json

    import hostile

    case = hostile.CASES["alias_bomb.yaml"]
    path = case.write(tmp_path / "bomb.yaml")
    result = hostile.probe(case, path, memory_mib=1024, timeout=120)
    assert result.returncode == 0, f"{result.describe()}\n{result.stderr[-3000:]}"
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["error"] == "ConfigError" and outcome["message"].startswith(f"{path}: ")
    assert re.search(case.problem, outcome["message"]) and len(outcome["message"]) < 300
    assert outcome["max_rss_mib"] < 256 and outcome["seconds"] < 10
