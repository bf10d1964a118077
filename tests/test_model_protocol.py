"""The model protocol every C model follows (issue 16): asymvq.UNet, asymvq.Autoencoder and
asymvq.TextEncoder expose the same names, cache at most four plans each (least recently used freed
first) and serialise calls from several threads; the sampler finds the C UNet by type."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from fixtures import random_tensor
from reference.unet_reference import random_unet_weights

import asymvq
from asymvq import _core, config, tables
from asymvq.autoencoder import Autoencoder
from asymvq.config import TextEncoderSpec
from asymvq.sampler import Sampler
from asymvq.text_encoder import TextEncoder
from asymvq.unet import UNet

PROPERTIES = ("precision", "num_parameters", "memory_bytes", "plans")
METHODS = ("clear_plans",)
TINY_TEXT = TextEncoderSpec(width=64, layers=2, heads=4, mlp=128)


def tiny_unet() -> UNet:
    spec = config.load(config.packaged_tiny_config("v1-t2i-inference.yaml"))
    assert isinstance(spec, config.DiffusionSpec)
    return UNet.from_config(spec.unet, random_unet_weights(spec.unet, seed=1))


def tiny_decoder() -> Autoencoder:
    path = config.packaged_tiny_config("autoencoder_kl_woc_32x32x4.yaml")
    spec = config.load(path)
    assert isinstance(spec, config.AutoencoderSpec)
    weights = {name: random_tensor(name, shape).numpy() for name, shape in tables.decoder_tensors(spec).items()}
    return Autoencoder.from_config(path, weights, parts="decoder")


def tiny_text_encoder() -> TextEncoder:
    weights = {n: random_tensor(n, s).numpy() for n, s in tables.text_encoder_tensors(TINY_TEXT).items()}
    return TextEncoder.from_config(TINY_TEXT, weights)


def unet_inputs(batch: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 4, h, w), dtype=np.float32)
    context = rng.standard_normal((batch, 77, 64), dtype=np.float32)
    return x, np.full(batch, 500), context


@pytest.mark.parametrize("cls", [UNet, Autoencoder, TextEncoder])
def test_every_model_class_exposes_the_same_protocol(cls: type) -> None:
    for name in PROPERTIES:
        assert isinstance(getattr(cls, name, None), property), f"{cls.__name__}.{name} is not a property"
    for name in METHODS:
        assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} is not a method"


@pytest.mark.parametrize("cls", [UNet, Autoencoder])
def test_the_spatial_models_name_their_size_multiple_alike(cls: type) -> None:
    assert isinstance(getattr(cls, "size_multiple", None), property)


def test_the_three_c_models_share_one_base_type() -> None:
    for core_type in (_core.UNet, _core.Autoencoder, _core.TextEncoder):
        assert issubclass(core_type, _core.Model)
    with pytest.raises(TypeError):
        _core.Model()


def test_each_model_lists_its_plans_with_their_shape_and_bytes() -> None:
    unet, decoder, text = tiny_unet(), tiny_decoder(), tiny_text_encoder()
    unet(*unet_inputs(1, 8, 8))
    decoder.decode(np.zeros((1, 4, 4, 6), np.float32))
    text.encode_ids(np.zeros((2, 77), np.int64))
    (u,), (d,), (t,) = unet.plans, decoder.plans, text.plans
    assert (u["batch"], u["height"], u["width"], u["context_length"]) == (1, 8, 8, 77)
    assert (d["task"], d["batch"], d["height"], d["width"]) == ("decode", 1, 32, 48)
    assert (t["batch"], t["tokens"]) == (2, 77)
    for model, plan in ((unet, u), (decoder, d), (text, t)):
        assert plan["bytes"] == plan["arena_bytes"] + plan["scratch_bytes"] > 0 and plan["steps"] > 0
        assert model.memory_bytes == plan["bytes"]
        model.clear_plans()
        assert model.plans == [] and model.memory_bytes == 0


def test_at_most_four_plans_are_kept_and_the_least_recently_used_goes_first() -> None:
    text = tiny_text_encoder()
    for batch in (1, 2, 3, 4, 1, 5):  # batch 1 used again before 5 arrives: 2 is the oldest then
        text.encode_ids(np.zeros((batch, 77), np.int64))
    assert [p["batch"] for p in text.plans] == [3, 4, 1, 5]


def test_calls_from_two_threads_on_one_unet_wait_for_each_other_and_match_serial_calls() -> None:
    unet = tiny_unet()
    args = [unet_inputs(1, 8, 8, seed) for seed in range(4)]
    serial = [unet(*a) for a in args]
    got: dict[int, Any] = {}

    def call(i: int) -> None:
        for _ in range(3):
            got[i] = unet(*args[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(4):
        np.testing.assert_array_equal(got[i], serial[i])


def test_num_params_still_reads_num_parameters_with_a_deprecation_warning() -> None:
    unet = tiny_unet()
    with pytest.warns(DeprecationWarning, match="num_parameters"):
        assert unet.num_params == unet.num_parameters


def test_factor_is_the_autoencoders_size_multiple() -> None:
    decoder = tiny_decoder()
    assert decoder.factor == decoder.size_multiple == 8


def test_an_object_that_only_looks_like_a_unet_is_called_as_python() -> None:
    # the C loop is chosen by type: an attribute named like the old capsule hook changes nothing
    unet = tiny_unet()
    calls = []

    class LookAlike:
        _c_unet = "not a capsule"

        def __call__(self, x: np.ndarray, t: np.ndarray, ctx: np.ndarray) -> np.ndarray:
            calls.append(len(x))
            return unet(x, t, ctx)

    x, _, context = unet_inputs(1, 8, 8)
    out = Sampler("ddim", 2).sample(LookAlike(), x, context, None, 1.0)
    assert calls == [1, 1]
    np.testing.assert_array_equal(out, Sampler("ddim", 2).sample(unet, x, context, None, 1.0))


def test_the_model_classes_are_exported() -> None:
    assert asymvq.UNet is UNet and asymvq.Autoencoder is Autoencoder and asymvq.TextEncoder is TextEncoder


# ---- the one config parser (UNet and autoencoder configs) --------------------------------------------


def tiny_unet_config() -> dict[str, Any]:
    from asymvq.unet import _c_config

    spec = config.load(config.packaged_tiny_config("v1-t2i-inference.yaml"))
    assert isinstance(spec, config.DiffusionSpec)
    return _c_config(spec.unet)


@pytest.mark.parametrize(
    "key, value, error, message",
    [
        ("in_channels", 4.0, TypeError, "UNet config: in_channels must be an int, got float"),
        ("in_channels", True, TypeError, "UNet config: in_channels must be an int, got bool"),
        ("channel_mult", [1, "2"], TypeError, r"UNet config: channel_mult\[1\] must be an int, got str"),
        ("channel_mult", "12", TypeError, "UNet config: channel_mult must be a sequence of ints, got str"),
        ("in_channels", 2**40, ValueError, r"UNet config: in_channels = 1099511627776 is out of range"),
        ("channel_mult", [1] * 9, ValueError, "UNet config: channel_mult must have 0 to 8 entries, got 9"),
    ],
)
def test_a_bad_config_value_is_refused_naming_its_key(key: str, value: Any, error: type, message: str) -> None:
    cfg = {**tiny_unet_config(), key: value}
    with pytest.raises(error, match=message) as info:
        _core.UNet(cfg, {})
    assert isinstance(info.value, asymvq.Error)


def test_a_missing_config_key_is_named() -> None:
    cfg = tiny_unet_config()
    del cfg["context_dim"]
    with pytest.raises(ValueError, match="UNet config: missing 'context_dim'"):
        _core.UNet(cfg, {})


def test_an_autoencoder_config_goes_through_the_same_parser() -> None:
    with pytest.raises(TypeError, match="encoder config: ch must be an int, got str"):
        _core.Autoencoder({}, encoder={"in_channels": 3, "ch": "128"})
