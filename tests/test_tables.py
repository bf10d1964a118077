"""asymvq.tables: every tensor name and shape each model needs, checked against SPEC's counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from asymvq import config, tables
from asymvq.tables import WeightsError, count_parameters


def spec(name: str, tiny: bool = False) -> Any:
    return config.load((config.packaged_tiny_config if tiny else config.packaged_config)(name))


def fake(table: dict[str, tuple[int, ...]], dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Zero-memory arrays of the table's shapes."""
    return {name: np.broadcast_to(np.zeros((), dtype), shape) for name, shape in table.items()}


SD_INPAINT = "v1-inpainting-inference.yaml"
SD_T2I = "v1-t2i-inference.yaml"
DECODERS = {
    # size suffix -> (decoder.* tensors, total / up_layers / cond-encoder parameters) -- SPEC §4.2, §4.8, §11
    "": (148, 75_481_987, 15_205_760, 10_786_048),
    "_large": (180, 194_348_739, 34_211_904, 24_264_576),
    "_large2": (244, 432_786_691, 60_820_224, 43_133_440),
}


# ---------------------------------------------------------------------------------------------
# Counts of the real models (SPEC §2.1, §2.5, §1.2, §3.1, §3.5, §4.2, §4.8, §11)


@pytest.mark.parametrize("name, params", [(SD_INPAINT, 859_535_364), (SD_T2I, 859_520_964)])
def test_unet_has_686_tensors_and_the_spec_parameter_count(name: str, params: int) -> None:
    table = tables.unet_tensors(spec(name).unet)
    assert (len(table), count_parameters(table)) == (686, params)
    assert all(n.startswith("model.diffusion_model.") for n in table)


def test_clip_text_model_has_196_weights_and_123m_parameters() -> None:
    table = tables.text_encoder_tensors(spec(SD_T2I).text_encoder)
    assert (len(table), count_parameters(table)) == (196, 123_060_480)
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" not in table


def test_vae_encoder_has_106_tensors_plus_quant_conv() -> None:
    table = tables.vae_encoder_tensors(spec(SD_INPAINT).first_stage)
    encoder = {n: s for n, s in table.items() if n.startswith("first_stage_model.encoder.")}
    assert (len(encoder), count_parameters(encoder)) == (106, 34_163_592)
    assert set(table) - set(encoder) == {"first_stage_model.quant_conv.weight", "first_stage_model.quant_conv.bias"}
    assert table["first_stage_model.quant_conv.weight"] == (8, 8, 1, 1)


@pytest.mark.parametrize("size", sorted(DECODERS))
def test_conditional_decoder_table_matches_the_spec_counts(size: str) -> None:
    count, total, up_layers, cond = DECODERS[size]
    s = spec(f"autoencoder_kl_32x32x4{size}.yaml")
    table = tables.decoder_tensors(s)
    decoder = {n: v for n, v in table.items() if n.startswith("decoder.")}
    assert len(decoder) == count
    assert set(table) - set(decoder) == {"post_quant_conv.weight", "post_quant_conv.bias"}
    assert count_parameters(decoder) == total - up_layers
    assert count_parameters(tables.up_layers_tensors(s)) == up_layers
    assert count_parameters(tables.cond_encoder_tensors(s)) == cond


@pytest.mark.parametrize("size", sorted(DECODERS))
def test_wocondition_decoder_table_omits_the_unused_condition_encoder(size: str) -> None:
    count, total, up_layers, cond = DECODERS[size]
    table = tables.decoder_tensors(spec(f"autoencoder_kl_woc_32x32x4{size}.yaml"))
    assert not any(n.startswith("decoder.encoder.") for n in table)
    assert len(table) == count - 10 + 2
    assert count_parameters(table) - 20 == total - up_layers - cond


def test_base_decoder_main_path_is_sds_vae_decoder() -> None:
    table = tables.decoder_tensors(spec(SD_T2I).first_stage, prefix="first_stage_model.")
    assert count_parameters({n: s for n, s in table.items() if ".decoder." in n}) == 49_490_179


# ---------------------------------------------------------------------------------------------
# Shapes of individual keys (SPEC tables)


def test_unet_key_shapes_follow_the_spec() -> None:
    table = tables.unet_tensors(spec(SD_INPAINT).unet)
    p = "model.diffusion_model."
    expected = {
        "time_embed.0.weight": (1280, 320),
        "input_blocks.0.0.weight": (320, 9, 3, 3),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (320, 1280),
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "middle_block.1.norm.weight": (1280,),
        "output_blocks.0.0.in_layers.2.weight": (1280, 2560, 3, 3),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.0.skip_connection.weight": (1280, 1920, 1, 1),
        "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.9.0.in_layers.0.weight": (960,),
        "out.2.weight": (4, 320, 3, 3),
    }
    assert {n: table[p + n] for n in expected} == expected
    assert p + "input_blocks.10.1.norm.weight" not in table  # no attention at ds 8
    assert p + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.bias" not in table


def test_decoder_nin_shortcuts_exist_only_where_widths_change() -> None:
    table = tables.decoder_tensors(spec("autoencoder_kl_32x32x4_large.yaml"))
    shortcuts = {n: s for n, s in table.items() if "nin_shortcut.weight" in n}
    assert shortcuts == {
        "decoder.up.1.block.0.nin_shortcut.weight": (384, 768, 1, 1),
        "decoder.up.0.block.0.nin_shortcut.weight": (192, 384, 1, 1),
    }


def test_decoder_blocks_and_condition_encoder_follow_the_spec() -> None:
    table = tables.decoder_tensors(spec("autoencoder_kl_32x32x4_large2.yaml"))
    assert table["decoder.conv_in.weight"] == (1024, 4, 3, 3)
    assert table["decoder.up.3.block.5.conv2.weight"] == (1024, 1024, 3, 3)
    assert "decoder.up.3.block.6.conv1.weight" not in table
    assert "decoder.up.0.upsample.conv.weight" not in table
    assert table["decoder.encoder.layers.2.weight"] == (1024, 512, 4, 4)
    assert table["decoder.conv_out.weight"] == (3, 256, 3, 3)


def test_up_layers_shapes_follow_the_spec() -> None:
    table = tables.up_layers_tensors(spec("autoencoder_kl_32x32x4.yaml"))
    weights = [table[f"decoder.up_layers.{i}.deconv.weight"] for i in range(4)]
    assert weights == [(512, 512, 4, 4), (1024, 512, 4, 4), (512, 256, 4, 4), (256, 128, 4, 4)]


def test_text_encoder_table_matches_transformers_clip_text_model() -> None:
    import transformers  # test-only reference

    s = spec(SD_T2I, tiny=True).text_encoder
    model = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=s.vocab_size,
            hidden_size=s.width,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            intermediate_size=s.mlp,
            max_position_embeddings=s.max_positions,
        )
    )
    # transformers 4.19 (the reference's) nests the weights under "text_model."; newer releases do not.
    reference = {
        n.removeprefix("text_model."): tuple(t.shape)
        for n, t in model.state_dict().items()
        if not n.endswith("position_ids")
    }
    ours = tables.text_encoder_tensors(s, prefix="")
    assert ours == reference


# ---------------------------------------------------------------------------------------------
# Requirements and ignored prefixes


def test_inpaint_requirements_are_text_encoder_unet_and_vae_encoder() -> None:
    req = tables.requirements(spec(SD_INPAINT))
    assert req.kind == "inpaint"
    assert len(req.table) == 196 + 686 + 108


def test_txt2img_requirements_have_no_vae_encoder() -> None:
    req = tables.requirements(spec(SD_T2I))
    assert len(req.table) == 196 + 686
    assert req.is_ignored("first_stage_model.encoder.conv_in.weight")


def test_decoder_checkpoints_ignore_up_layers_loss_and_the_frozen_encoder() -> None:
    ignored = tables.ignored_prefixes("decoder")
    assert set(ignored) == {"decoder.up_layers.", "loss.", "encoder.", "quant_conv."}


def test_wocondition_decoder_also_ignores_the_condition_encoder() -> None:
    assert set(tables.ignored_prefixes("decoder_wocondition")) - set(tables.ignored_prefixes("decoder")) == {
        "decoder.encoder."
    }


def test_sd_checkpoints_ignore_position_ids_ema_schedule_and_the_vae_decoder() -> None:
    req = tables.requirements(spec(SD_INPAINT))
    for name in (
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        "model_ema.diffusion_modelinput_blocks00weight",
        "alphas_cumprod",
        "first_stage_model.decoder.conv_in.weight",
        "first_stage_model.post_quant_conv.bias",
    ):
        assert req.is_ignored(name), name
    assert not req.is_ignored("first_stage_model.encoder.conv_in.weight")


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'vae'"):
        tables.ignored_prefixes("vae")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# check()


def test_check_accepts_exact_weights_in_every_float_dtype() -> None:
    req = tables.requirements(spec(SD_INPAINT))
    for dtype in (np.float32, np.float16):
        tables.check(req, fake(req.table, dtype))


def test_check_ignores_known_unused_and_foreign_keys() -> None:
    s = spec("autoencoder_kl_woc_32x32x4.yaml", tiny=True)
    req = tables.requirements(s)
    tensors = fake(req.table)
    tensors.update(fake(tables.up_layers_tensors(s)))
    tensors.update(fake(tables.cond_encoder_tensors(s)))
    tensors["loss.logvar"] = np.zeros(())
    tensors["something_else"] = np.zeros(3, np.int64)
    tables.check(req, tensors)


def test_check_reports_every_problem_at_once() -> None:
    req = tables.requirements(spec("autoencoder_kl_32x32x4.yaml", tiny=True))
    tensors = fake(req.table)
    del tensors["decoder.conv_in.weight"]
    del tensors["decoder.norm_out.bias"]
    tensors["decoder.conv_out.weight"] = np.zeros((3, 64, 3, 3), np.float32)
    tensors["decoder.conv_out.bias"] = np.zeros(3, np.int64)
    tensors["decoder.up.0.block.9.conv1.weight"] = np.zeros(1, np.float32)
    with pytest.raises(WeightsError) as info:
        tables.check(req, tensors, context="base.ckpt")
    problems = info.value.problems
    assert sorted(problems) == sorted(
        [
            "missing: decoder.conv_in.weight (expected shape [64, 4, 3, 3])",
            "missing: decoder.norm_out.bias (expected shape [32])",
            "wrong shape: decoder.conv_out.weight is [3, 64, 3, 3], expected [3, 32, 3, 3]",
            "wrong dtype: decoder.conv_out.bias is int64, expected one of float32, float16, bfloat16",
            "unexpected: decoder.up.0.block.9.conv1.weight (the config's decoder model has no such tensor)",
        ]
    )
    assert str(info.value).startswith(
        "base.ckpt: 5 problem(s) with the weights (2 missing, 1 unexpected, 1 wrong shape, 1 wrong dtype):"
    )
    assert isinstance(info.value, ValueError)


def test_check_with_a_plain_table_only_checks_its_names() -> None:
    table = {"a.weight": (2, 3)}
    tables.check(table, {"a.weight": np.zeros((2, 3), np.float32), "a.extra": np.zeros(1)})
    with pytest.raises(WeightsError, match=r"missing: a\.weight"):
        tables.check(table, {})


def test_check_accepts_bf16_as_the_checkpoint_reader_returns_it() -> None:
    from asymvq import checkpoint

    tables.check({"w": (2,)}, {"w": np.zeros(2, checkpoint.BF16)})
    assert tables.dtype_name(np.zeros(2, checkpoint.BF16)) == "bfloat16"


def test_check_uses_the_dtype_resolver_for_carrier_dtypes() -> None:
    table = {"w": (2,)}
    bf16_as_u16 = np.zeros(2, np.uint16)
    with pytest.raises(WeightsError, match="w is uint16"):
        tables.check(table, {"w": bf16_as_u16})
    tables.check(table, {"w": bf16_as_u16}, dtype_of=lambda a: "bfloat16")


# ---------------------------------------------------------------------------------------------
# Tiny configs


@pytest.mark.parametrize("name", config.packaged_config_names(tiny=True))
def test_every_tiny_table_has_widths_divisible_by_32_groups(name: str) -> None:
    s = spec(name, tiny=True)
    table = tables.requirements(s).table
    norms = [shape[0] for n, shape in table.items() if "norm" in n and n.endswith(".weight") and "layer_norm" not in n]
    assert norms and all(c % 32 == 0 for c in norms)


def test_tiny_models_are_small() -> None:
    sizes = [
        count_parameters(tables.requirements(spec(n, tiny=True)).table) for n in config.packaged_config_names(True)
    ]
    assert max(sizes) < 16_000_000
