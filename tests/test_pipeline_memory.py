"""Memory of the models and the pipelines (issue 17 item 4), on tiny random-weight models.

What is specified: the arena and scratchpad sizes reported per plan are the ones the C plans allocate
(the process-wide count and the address space move by exactly / at least that much); a pipeline frees
each model's arena when its stage is over and a later call allocates it again with the same result;
weights are owned copies, so the checkpoint file is neither mapped nor needed once a pipeline exists;
``bench pipeline`` reports weights, arena, scratchpad and the headroom against the targets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import pytest
from fixtures import random_tensor, write_checkpoint

from asymvq import _core, config, tables
from asymvq.autoencoder import Autoencoder
from asymvq.pipelines import InpaintPipeline

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT.parent / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
TINY = ROOT / "configs" / "tiny"
CONFIG_D = TINY / "v1-inpainting-inference.yaml"
CONFIG_C = TINY / "autoencoder_kl_32x32x4_large2.yaml"
STEPS = 2


def process_memory() -> Dict[str, int]:
    return dict(_core.Model.process_memory())


def vm_size() -> int:
    """The process's virtual size in bytes (a freed mmap'd arena leaves it at once)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def tiny_decoder(precision: str = "fp32") -> Autoencoder:
    spec = config.load(CONFIG_C)
    assert isinstance(spec, config.AutoencoderSpec)
    weights = {name: random_tensor(name, shape).numpy() for name, shape in tables.decoder_tensors(spec).items()}
    return Autoencoder.from_config(CONFIG_C, weights, parts="decoder", precision=precision)


def decoder_inputs(size: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    mask = np.zeros((1, 1, size, size), np.float32)
    mask[..., size // 4 : size // 2, size // 4 : size // 2] = 1
    return {
        "z": rng.standard_normal((1, 4, size // 8, size // 8), dtype=np.float32),
        "image": rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32),
        "mask": mask,
    }


def pair(size: int = 64) -> Dict[str, np.ndarray]:
    x = decoder_inputs(size)
    return {"image": x["image"], "mask": x["mask"]}


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("memory-ckpts")
    write_checkpoint(d / "sd-inpaint.ckpt", "sd15-inpaint")
    write_checkpoint(d / "decoder-large2.ckpt", "decoder-large2")
    return d


@pytest.fixture()
def own_ckpts(ckpt_dir: Path, tmp_path: Path) -> Iterator[Dict[str, Path]]:
    """Copies of the checkpoints that a test may delete or overwrite."""
    out = {name: tmp_path / f"{name}.ckpt" for name in ("sd-inpaint", "decoder-large2")}
    for name, path in out.items():
        shutil.copyfile(ckpt_dir / f"{name}.ckpt", path)
    yield out


def build(ckpts: Dict[str, Path], precision: str = "fp32") -> InpaintPipeline:
    return InpaintPipeline.from_original(
        CONFIG_D, ckpts["sd-inpaint"], CONFIG_C, ckpts["decoder-large2"], vocab=VOCAB, precision=precision
    )


def run(pipe: InpaintPipeline, seed: int = 0) -> Any:
    x = pair()
    return pipe(x["image"], x["mask"], steps=STEPS, seed=seed, progress=False)


# ---------------------------------------------------------------------------------------------
# Plans: reported sizes, release


def test_a_plans_reported_arena_and_scratchpad_are_what_the_process_holds_for_it() -> None:
    dec = tiny_decoder()
    x = decoder_inputs(64)
    before = process_memory()["plan_bytes"]
    dec.decode(x["z"], image=x["image"], mask=x["mask"])
    (plan,) = dec.plans
    assert plan["resident"] and plan["arena_bytes"] > 0 and plan["scratch_bytes"] >= 0
    assert dec.memory_bytes == plan["arena_bytes"] + plan["scratch_bytes"] == plan["bytes"]
    assert process_memory()["plan_bytes"] - before == plan["bytes"]


def test_released_arenas_leave_the_address_space_and_the_next_call_gives_the_same_output() -> None:
    dec = tiny_decoder()
    x = decoder_inputs(512)  # an arena of hundreds of MB: mapped on its own, unmapped when freed
    first = dec.decode(x["z"], image=x["image"], mask=x["mask"])
    (plan,) = dec.plans
    assert plan["arena_bytes"] > 64 << 20, plan
    held, vm = process_memory()["plan_bytes"], vm_size()
    dec._core.release_memory()
    (after,) = dec.plans
    assert not after["resident"] and after["arena_bytes"] == plan["arena_bytes"]  # the plan stays
    assert dec.memory_bytes == 0
    assert held - process_memory()["plan_bytes"] == plan["bytes"]
    assert vm - vm_size() >= plan["arena_bytes"]
    again = dec.decode(x["z"], image=x["image"], mask=x["mask"])
    assert dec.plans[0]["resident"] and dec.plans[0]["steps"] == plan["steps"]  # same plan, not rebuilt
    np.testing.assert_array_equal(again, first)


def test_weight_bytes_count_a_models_owned_copies_and_fall_back_when_it_is_freed() -> None:
    before = process_memory()["weight_bytes"]
    dec = tiny_decoder("fp32")
    held = process_memory()["weight_bytes"] - before
    assert held == 4 * dec.num_parameters  # fp32 sources copied, nothing packed yet
    x = decoder_inputs(64)
    dec.decode(x["z"], image=x["image"], mask=x["mask"])
    assert process_memory()["weight_bytes"] - before >= held  # packed copies (Winograd's too) counted
    del dec
    assert process_memory()["weight_bytes"] == before


# ---------------------------------------------------------------------------------------------
# Pipelines


def test_a_pipeline_call_frees_every_models_arena_and_a_second_call_gives_the_identical_image(
    ckpt_dir: Path,
) -> None:
    pipe = build({"sd-inpaint": ckpt_dir / "sd-inpaint.ckpt", "decoder-large2": ckpt_dir / "decoder-large2.ckpt"})
    first = run(pipe)
    mem = pipe.memory()
    for name in ("text_encoder", "unet", "encoder", "decoder"):
        assert mem[name]["plans"], name  # built, and kept
        assert mem[name]["resident_bytes"] == 0, (name, mem[name])
        assert not any(p["resident"] for p in mem[name]["plans"]), name
    second = run(pipe)
    np.testing.assert_array_equal(second.arrays, first.arrays)
    np.testing.assert_array_equal(second.latents, first.latents)


def test_a_pipeline_told_to_keep_its_arenas_keeps_them_and_gives_the_same_image(ckpt_dir: Path) -> None:
    pipe = build({"sd-inpaint": ckpt_dir / "sd-inpaint.ckpt", "decoder-large2": ckpt_dir / "decoder-large2.ckpt"})
    released = run(pipe)
    pipe.release_between_stages = False
    kept = run(pipe)
    mem = pipe.memory()
    for name in ("text_encoder", "unet", "encoder", "decoder"):
        assert mem[name]["resident_bytes"] == sum(p["bytes"] for p in mem[name]["plans"]) > 0, name
    np.testing.assert_array_equal(kept.arrays, released.arrays)
    pipe.release_memory()
    assert all(pipe.memory()[n]["resident_bytes"] == 0 for n in ("text_encoder", "unet", "encoder", "decoder"))


def test_the_memory_report_names_the_weights_and_plans_of_the_process(ckpt_dir: Path) -> None:
    pipe = build({"sd-inpaint": ckpt_dir / "sd-inpaint.ckpt", "decoder-large2": ckpt_dir / "decoder-large2.ckpt"})
    mem = pipe.memory()
    params = sum(m.num_parameters for m in (pipe.text_encoder, pipe.unet, pipe.encoder, pipe.decoder))
    assert mem["weight_bytes"] >= 4 * params  # fp32 copies of this pipeline (other models may be alive)
    assert mem["plan_bytes"] >= 0


def test_the_checkpoint_files_are_not_mapped_once_the_pipeline_is_built(own_ckpts: Dict[str, Path]) -> None:
    pipe = build(own_ckpts)
    maps = Path("/proc/self/maps").read_text()
    for path in own_ckpts.values():
        assert str(path) not in maps, f"{path} is still mapped"
    assert pipe.memory()["weight_bytes"] > 0


def test_the_checkpoint_files_may_be_deleted_and_replaced_once_the_pipeline_is_built(
    own_ckpts: Dict[str, Path], ckpt_dir: Path
) -> None:
    reference = run(
        build({"sd-inpaint": ckpt_dir / "sd-inpaint.ckpt", "decoder-large2": ckpt_dir / "decoder-large2.ckpt"})
    )
    pipe = build(own_ckpts)
    os.remove(own_ckpts["decoder-large2"])
    with open(own_ckpts["sd-inpaint"], "r+b") as f:  # same inode, other bytes: a mapping would see them
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        f.write(b"\0" * size)
    np.testing.assert_array_equal(run(pipe).arrays, reference.arrays)


# ---------------------------------------------------------------------------------------------
# bench pipeline


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-memory") / "report.json"
    args = ["--tiny", "--size", "64", "--steps", "2", "--threads", "1", "--tasks", "inpaint"]
    args += ["--precision", "fp32", "--decoders", "large2", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "asymvq.bench", "pipeline", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    data: Dict[str, Any] = json.loads(out.read_text())
    data["stdout"] = proc.stdout
    return data


def test_bench_pipeline_reports_weights_arena_scratchpad_and_headroom_per_stage(bench_report: Dict[str, Any]) -> None:
    (run_,) = bench_report["runs"]
    by = {row["stage"]: row for row in run_["stages"]}
    for stage in ("text", "encode", "sample", "decode large2"):
        row = by[stage]
        assert row["weight_bytes"] > 0 and row["arena_bytes"] > 0, row
        assert row["headroom"] == row["peak_rss"] - row["weight_bytes"]
        assert row["plan_bytes"] >= row["arena_bytes"] + row["scratch_bytes"]  # held at the stage's end
    assert by["decode large2"]["weight_bytes"] > by["sample"]["weight_bytes"]  # the decoder joins the others
    assert run_["totals"]["large2"]["headroom"] == max(by[s]["headroom"] for s in by if s != "models (random weights)")
    assert "weights GB" in bench_report["stdout"] and "headroom GB" in bench_report["stdout"]
    assert "the 1.5 GB target)" in bench_report["stdout"]
