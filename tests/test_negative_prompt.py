"""negative_prompt= and sampler= on both pipelines (issue 15): the unconditional text of classifier-free
guidance replaces the original's "", and the sampler is chosen by name; the defaults stay the original's."""
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from fixtures import write_checkpoint

from asymvq.pipelines import InpaintPipeline, Txt2ImgPipeline
from asymvq.sampler import Sampler

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT.parent / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
TINY = ROOT / "configs" / "tiny"


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    d = tmp_path_factory.mktemp("neg-ckpts")
    dec = write_checkpoint(d / "decoder-base.ckpt", "decoder-base")
    inp = InpaintPipeline.from_original(TINY / "v1-inpainting-inference.yaml",
                                        write_checkpoint(d / "sd-inpaint.ckpt", "sd15-inpaint"),
                                        TINY / "autoencoder_kl_32x32x4.yaml", dec, vocab=VOCAB, precision="fp32")
    t2i = Txt2ImgPipeline.from_original(TINY / "autoencoder_kl_woc_32x32x4.yaml", dec,
                                        TINY / "v1-t2i-inference.yaml",
                                        write_checkpoint(d / "sd-t2i.ckpt", "sd15-txt2img"), vocab=VOCAB,
                                        precision="fp32")
    return inp, t2i


def spy(pipe: Any, monkeypatch) -> List[Dict[str, Any]]:
    """Records what the pipeline hands the sampler loop."""
    calls: List[Dict[str, Any]] = []
    real = type(pipe)._denoise

    def record(self, x_T, c, uc, scale, sampler, steps, eta, *args, **kwargs):
        calls.append(dict(uc=uc.copy(), c=c.copy(), sampler=sampler, eta=eta, smp=self._sampler(sampler, steps, eta)))
        return real(self, x_T, c, uc, scale, sampler, steps, eta, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "_denoise", record)
    return calls


def image_and_mask():
    rng = np.random.RandomState(0)
    img = (rng.rand(1, 3, 64, 64) * 2 - 1).astype(np.float32)
    msk = np.zeros((1, 1, 64, 64), np.float32)
    msk[..., 16:48, 16:48] = 1
    return img, msk


def test_txt2img_guides_with_the_negative_prompt_encoding(pipes, monkeypatch):
    _, t2i = pipes
    calls = spy(t2i, monkeypatch)
    a = t2i("a red house", height=64, width=64, steps=2, negative_prompt="blurry, dark", progress=False)
    b = t2i("a red house", height=64, width=64, steps=2, progress=False)
    np.testing.assert_array_equal(calls[0]["uc"], t2i._encode_text(["blurry, dark"]))
    np.testing.assert_array_equal(calls[1]["uc"], t2i._encode_text([""]))
    assert not np.array_equal(a.latents, b.latents)


def test_inpaint_guides_with_the_negative_prompt_encoding(pipes, monkeypatch):
    inp, _ = pipes
    calls = spy(inp, monkeypatch)
    img, msk = image_and_mask()
    a = inp(img, msk, steps=2, negative_prompt="text, watermark", progress=False)
    b = inp(img, msk, steps=2, progress=False)
    np.testing.assert_array_equal(calls[0]["uc"], inp._encode_text(["text, watermark"]))
    np.testing.assert_array_equal(calls[1]["uc"], inp._encode_text([""]))
    assert not np.array_equal(a.latents, b.latents)


def test_a_negative_prompt_equal_to_empty_text_changes_nothing(pipes):
    _, t2i = pipes
    a = t2i("a boat", height=64, width=64, steps=2, negative_prompt="", progress=False)
    b = t2i("a boat", height=64, width=64, steps=2, progress=False)
    np.testing.assert_array_equal(a.latents, b.latents)


@pytest.mark.parametrize("name, kind, karras", [("dpmpp_2m", "dpmpp_2m", False), ("dpmpp_2m_karras", "dpmpp_2m", True),
                                                ("euler", "euler", False), ("euler_a", "euler_a", False)])
def test_both_pipelines_run_the_named_sampler_with_eta_0(pipes, monkeypatch, name, kind, karras):
    inp, t2i = pipes
    calls = spy(inp, monkeypatch)
    img, msk = image_and_mask()
    inp(img, msk, steps=3, sampler=name, progress=False)
    t2i_calls = spy(t2i, monkeypatch)
    t2i("a boat", height=64, width=64, steps=3, sampler=name, progress=False)
    for smp, eta in [(calls[0]["smp"], calls[0]["eta"]), (t2i_calls[0]["smp"], t2i_calls[0]["eta"])]:
        assert (smp.kind, smp.karras, eta) == (kind, karras, 0.0)


def test_the_inpaint_pipeline_default_stays_the_original_ddim_with_eta_1(pipes, monkeypatch):
    inp, _ = pipes
    calls = spy(inp, monkeypatch)
    img, msk = image_and_mask()
    inp(img, msk, steps=2, progress=False)
    assert (calls[0]["smp"].kind, calls[0]["eta"]) == ("ddim", 1.0)


def test_euler_a_in_the_pipeline_draws_its_step_noise_from_seed_plus_2(pipes):
    _, t2i = pipes
    res = t2i("a boat", height=64, width=64, steps=3, sampler="euler_a", seed=5, progress=False)
    c, uc = t2i._encode_text(["a boat"]), t2i._encode_text([""])
    from asymvq.sampler import randn

    want = Sampler("euler_a", 3).sample(t2i.unet, randn(5, (1, 4, 8, 8)), c, uc, 7.5, seed=7)
    np.testing.assert_array_equal(res.latents, want)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="euler", eta=0.5), "eta applies to the ddim sampler only"),
    (dict(sampler="heun"), "unknown sampler 'heun': choose one of ddim, plms, dpmpp_2m, dpmpp_2m_karras"),
])
def test_bad_sampler_arguments_are_value_errors_before_any_work(pipes, kwargs, match):
    inp, t2i = pipes
    img, msk = image_and_mask()
    with pytest.raises(ValueError, match=match):
        inp(img, msk, steps=2, progress=False, **kwargs)
    with pytest.raises(ValueError, match=match):
        t2i("a boat", height=64, width=64, steps=2, progress=False, **kwargs)
