"""compare's learned metrics (issue 14: LPIPS per image, FID per decoder), on random-weight networks.

The networks are saved as torch.export programs, as a user's would be. They are not lpips' AlexNet nor
pytorch-fid's InceptionV3 (torchvision, which both build on, cannot run beside this CPU build of torch):
an LPIPS-shaped net (random conv stages, unit-normalised channels, squared difference, non-negative 1x1
weights, spatial mean, sum over stages) and a random conv feature net. What is tested is the plumbing:
the images' conversion, what is compared, the FID statistics, the files, the errors, and no network use.
"""
import csv
import json
import math
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")  # the test extra installs it; never silently absent in CI
pytest.importorskip("torchmetrics")
import torch.nn.functional as F  # noqa: E402
from torch.export import Dim, export  # noqa: E402

from test_compare import CONFIG_D, STEPS, TINY, VOCAB, ckpts, compare_args, make_pairs  # noqa: E402,F401

from asymvq import quality  # noqa: E402
from asymvq.__main__ import main as asymvq_main  # noqa: E402
from asymvq.compare import LPIPS_METRICS, METRICS  # noqa: E402


class RandomLPIPS(torch.nn.Module):
    """LPIPS's computation on a random two-stage backbone: inputs [N, 3, H, W] in [-1, 1] -> [N, 1, 1, 1]."""

    def __init__(self):
        super().__init__()
        self.s1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.s2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.lin1 = torch.nn.Parameter(torch.rand(1, 8, 1, 1))
        self.lin2 = torch.nn.Parameter(torch.rand(1, 16, 1, 1))

    def forward(self, a, b):
        total = 0
        fa, fb = a, b
        for stage, lin in ((self.s1, self.lin1), (self.s2, self.lin2)):
            fa, fb = torch.relu(stage(fa)), torch.relu(stage(fb))
            na = fa / (fa.square().sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (lin * (na - nb).square()).sum(1, keepdim=True).mean([2, 3], keepdim=True)
        return total


class RandomFeatures(torch.nn.Module):
    """A random conv feature net: [1, 3, 299, 299] in [0, 1] -> [1, 32]."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 5, stride=4)
        self.c2 = torch.nn.Conv2d(16, 32, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.c2(torch.relu(self.c1(x * 2 - 1)))).mean([2, 3])


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("quality-nets")
    torch.manual_seed(0)
    lp, fe = RandomLPIPS().eval(), RandomFeatures().eval()
    a, b = torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 128, 128)
    h, w = Dim("h", min=64, max=2048), Dim("w", min=64, max=2048)
    torch.export.save(export(lp, (a, b), dynamic_shapes=({2: h, 3: w}, {2: h, 3: w})), str(d / "lpips.pt2"))
    torch.export.save(export(fe, (torch.zeros(1, 3, 299, 299),)), str(d / "fid.pt2"))
    # the pitfall the loader must catch: one example tensor for both inputs ties them in the program
    torch.export.save(export(lp, (a, a), dynamic_shapes=({2: h, 3: w}, {2: h, 3: w})), str(d / "tied.pt2"))
    return {"lpips": d / "lpips.pt2", "fid": d / "fid.pt2", "tied": d / "tied.pt2", "lpips_module": lp,
            "fid_module": fe}


def images(n, size=64, seed=3):
    rng = np.random.default_rng(seed)
    return [(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(n)]


def to_unit(img):
    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


# ---- the metrics on their own -------------------------------------------------------------------------------


def test_lpips_is_the_networks_distance_of_the_images_in_minus_one_one_nchw(nets):
    a, b = images(2, size=128)
    with torch.no_grad():
        ref = float(nets["lpips_module"](to_unit(a) * 2 - 1, to_unit(b) * 2 - 1))
    got = quality.LPIPS(str(nets["lpips"])).distance(a, b)
    assert math.isfinite(got) and got > 0
    assert got == pytest.approx(ref, rel=1e-5)


def test_lpips_of_an_image_with_itself_is_zero(nets):
    (a,) = images(1, size=192)
    assert quality.LPIPS(str(nets["lpips"])).distance(a, a) == 0.0


def test_lpips_known_ignores_what_the_decoder_did_inside_the_hole(nets):
    original, other = images(2)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1.0
    result = original.copy()
    result[16:48, 16:48] = other[16:48, 16:48]  # new content in the hole only
    net = quality.LPIPS(str(nets["lpips"]))
    assert net.distance(original, result) > 0
    assert net.distance(original, quality.paste_hole(original, result, mask)) == 0.0


def test_fid_features_are_the_networks_on_the_image_resized_bilinearly_to_299(nets):
    (a,) = images(1)
    with torch.no_grad():
        x = F.interpolate(to_unit(a), size=(299, 299), mode="bilinear", align_corners=False)
        ref = nets["fid_module"](x)[0].double().numpy()
    f = quality.FIDFeatures(str(nets["fid"]))
    np.testing.assert_allclose(f.features(a), ref, rtol=1e-5, atol=1e-7)
    assert f.dim == 32


def numpy_fid(real, fake):
    """The Fréchet distance written out with numpy, the reference for torchmetrics' estimator:
    tr sqrt(s1 s2) = tr sqrt(s1^1/2 s2 s1^1/2), a symmetric PSD matrix (exact for singular covariances)."""
    r, g = np.stack(real), np.stack(fake)
    mu1, mu2 = r.mean(0), g.mean(0)
    s1, s2 = np.cov(r, rowvar=False), np.cov(g, rowvar=False)
    w, v = np.linalg.eigh(s1)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(half @ s2 @ half), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_fid_matches_the_frechet_distance_written_out_with_numpy(nets):
    f = quality.FIDFeatures(str(nets["fid"]))
    real = [f.features(i) for i in images(40, seed=1)]
    fake = [f.features(np.clip(i.astype(int) + 40, 0, 255).astype(np.uint8)) for i in images(40, seed=2)]
    got = quality.frechet_distance(real, fake)
    assert got > 0 and got == pytest.approx(numpy_fid(real, fake), rel=1e-4)


def test_fid_of_a_set_with_itself_is_about_zero_and_needs_two_images(nets):
    f = quality.FIDFeatures(str(nets["fid"]))
    feats = [f.features(i) for i in images(8)]
    scale = float(np.mean(np.square(feats)))
    assert abs(quality.frechet_distance(feats, feats)) < 1e-6 * scale
    assert math.isnan(quality.frechet_distance(feats[:1], feats))


def test_features_survive_the_json_record_exactly():
    f = np.random.default_rng(0).standard_normal(2048)
    assert np.array_equal(quality.decode_features(json.loads(json.dumps(quality.encode_features(f)))), f)


# ---- bad files, missing extra -------------------------------------------------------------------------------


def test_a_missing_network_file_is_named(tmp_path):
    with pytest.raises(quality.QualityError, match=r"--lpips .*nope\.pt2: file not found"):
        quality.LPIPS(str(tmp_path / "nope.pt2"))


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04 truncated"])
def test_a_corrupt_network_file_is_refused_with_how_to_make_one(tmp_path, content):
    p = tmp_path / "bad.pt2"
    p.write_bytes(content)
    with pytest.raises(quality.QualityError, match=r"--fid .*bad\.pt2: not a torch\.export program"):
        quality.FIDFeatures(str(p))


def test_an_lpips_file_that_is_a_feature_net_is_refused(nets):
    with pytest.raises(quality.QualityError, match="does not take two"):
        quality.LPIPS(str(nets["fid"]))


def test_an_lpips_export_with_tied_inputs_is_refused(nets):
    with pytest.raises(quality.QualityError, match="exported from one tensor"):
        quality.LPIPS(str(nets["tied"]))


@pytest.mark.parametrize("missing", ["torch", "torchmetrics"])
def test_without_the_quality_extra_the_error_names_the_pip_command(nets, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # import fails as if not installed
    with pytest.raises(quality.QualityError, match=rf"needs {missing}.*pip install \"asymvq\[quality\]\""):
        quality.FIDFeatures(str(nets["fid"]))


# ---- the compare command ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(ckpts, nets, tmp_path_factory):
    d = tmp_path_factory.mktemp("compare-quality")
    indir, outdir = make_pairs(d / "in", 3), d / "out"
    assert asymvq_main(compare_args(ckpts, indir, outdir, "--lpips", str(nets["lpips"]),
                                    "--fid", str(nets["fid"]))) == 0
    return indir, outdir


def test_compare_writes_lpips_per_image_and_decoder(measured):
    _, out = measured
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0]) == ["image", "decoder", *METRICS, *LPIPS_METRICS]
    assert len(rows) == 9
    for r in rows:
        assert all(math.isfinite(float(r[k])) and float(r[k]) >= 0 for k in LPIPS_METRICS)
        assert float(r["lpips_known"]) < float(r["lpips"])  # the hole's new content no longer counts
    by_dec = {d: [float(r["lpips"]) for r in rows if r["decoder"] == d] for d in ("vanilla", "base", "large2")}
    assert len({tuple(v) for v in by_dec.values()}) == 3  # different decoders, different values


def test_compare_lpips_is_the_networks_distance_of_the_written_images(measured, nets):
    indir, out = measured
    from asymvq.image import load_pair

    x, _, _ = load_pair(indir / "pair1.png", indir / "pair1_mask.png")
    original = np.rint((x[0].transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    result = np.asarray(Image.open(out / "base" / "pair1.png"))
    row = next(r for r in csv.DictReader(open(out / "metrics.csv")) if r["image"] == "pair1.png"
               and r["decoder"] == "base")
    with torch.no_grad():
        ref = float(nets["lpips_module"](to_unit(original) * 2 - 1, to_unit(result) * 2 - 1))
    assert float(row["lpips"]) == pytest.approx(ref, rel=1e-5)


def test_compare_writes_fid_per_decoder_in_summary_json_and_plot(measured, nets):
    _, out = measured
    summary = {r["decoder"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    fids = {d: float(summary[d]["fid"]) for d in ("vanilla", "base", "large2")}
    assert all(math.isfinite(v) for v in fids.values()) and len(set(fids.values())) == 3
    doc = json.loads((out / "metrics.json").read_text())
    assert {s["decoder"]: s["fid"] for s in doc["summary"]} == pytest.approx(fids)
    assert doc["quality"] == {"lpips": str(nets["lpips"]), "fid": str(nets["fid"])}
    w, h = Image.open(out / "metrics.png").size
    assert w > 4 * h  # six panels side by side (three without the learned metrics)


def test_compare_fid_is_the_frechet_distance_of_the_original_and_decoded_features(measured, nets):
    indir, out = measured
    from asymvq.image import load_pair

    f = quality.FIDFeatures(str(nets["fid"]))
    real, fake = [], []
    for i in range(3):
        x, _, _ = load_pair(indir / f"pair{i}.png", indir / f"pair{i}_mask.png")
        real.append(f.features(np.rint((x[0].transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)))
        fake.append(f.features(np.asarray(Image.open(out / "large2" / f"pair{i}.png"))))
    summary = {r["decoder"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert float(summary["large2"]["fid"]) == pytest.approx(numpy_fid(real, fake), rel=1e-4, abs=1e-9)


def test_a_resumed_compare_keeps_every_pairs_fid_features(measured, ckpts, nets, tmp_path):
    import shutil

    indir, out = measured
    again = tmp_path / "out"
    shutil.copytree(out, again)
    before = (again / "summary.csv").read_text()
    assert asymvq_main(compare_args(ckpts, indir, again, "--lpips", str(nets["lpips"]),
                                    "--fid", str(nets["fid"]))) == 0
    assert (again / "summary.csv").read_text() == before


def compare_rc(ckpts, tmp_path, capsys, *flags):
    indir = make_pairs(tmp_path / "in", 1)
    rc = asymvq_main(compare_args(ckpts, indir, tmp_path / "o", *flags))
    return rc, capsys.readouterr().err.strip().splitlines()


def test_compare_with_a_missing_lpips_file_exits_2_before_any_work(ckpts, tmp_path, capsys):
    rc, err = compare_rc(ckpts, tmp_path, capsys, "--lpips", str(tmp_path / "none.pt2"))
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --lpips") and "file not found" in err[0]
    assert not (tmp_path / "o").exists()


def test_compare_with_a_corrupt_fid_file_exits_2_with_one_line(ckpts, tmp_path, capsys):
    bad = tmp_path / "fid.pt2"
    bad.write_bytes(b"\x00" * 100)
    rc, err = compare_rc(ckpts, tmp_path, capsys, "--fid", str(bad))
    assert rc == 2 and len(err) == 1 and "not a torch.export program" in err[0]


def test_compare_without_the_quality_extra_exits_2_naming_the_pip_command(ckpts, nets, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    rc, err = compare_rc(ckpts, tmp_path, capsys, "--fid", str(nets["fid"]))
    assert rc == 2 and err == ['error: FID needs torchmetrics, not installed: pip install "asymvq[quality]"']


def test_learned_metrics_never_touch_the_network(ckpts, nets, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # where a hub download would land
    rc, err = compare_rc(ckpts, tmp_path, capsys, "--lpips", str(nets["lpips"]), "--fid", str(nets["fid"]),
                         "--no-plot")
    assert rc == 0, err
    assert not (tmp_path / "torch-home").exists()


def test_a_dask_worker_measures_the_same_learned_metrics_as_the_in_process_run(ckpts, nets, tmp_path):
    pytest.importorskip("distributed")
    from asymvq.batch import run_batch
    from asymvq.compare import DecoderSpec, Job

    indir = make_pairs(tmp_path / "in", 2)
    job = Job(config_d=str(CONFIG_D), ckpt_d=str(ckpts["sd"]), vocab=str(VOCAB), steps=STEPS, mode="compare",
              decoders=(DecoderSpec("vanilla"), DecoderSpec("base", str(TINY / "autoencoder_kl_32x32x4.yaml"),
                                                              str(ckpts["base"]))),
              lpips=str(nets["lpips"]), fid=str(nets["fid"]))
    local = run_batch(indir, tmp_path / "local", job, cluster=False, threads=1, progress=False, plot=False)
    dask = run_batch(indir, tmp_path / "dask", job, workers=1, threads=1, progress=False, plot=False, timeout=240)
    assert len(local.done) == len(dask.done) == 2 and dask.workers == 1 and not dask.failures
    assert (tmp_path / "dask" / "metrics.csv").read_text() == (tmp_path / "local" / "metrics.csv").read_text()
    assert (tmp_path / "dask" / "summary.csv").read_text() == (tmp_path / "local" / "summary.csv").read_text()
    assert "fid" in (tmp_path / "dask" / "summary.csv").read_text().splitlines()[0]


def test_compare_with_learned_metrics_runs_in_a_network_namespace_without_any_interface(ckpts, nets, tmp_path):
    import subprocess

    indir = make_pairs(tmp_path / "in", 2)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["TORCH_HOME"] = str(tmp_path / "torch-home")
    cmd = ["unshare", "-n", sys.executable, "-m", "asymvq", *compare_args(ckpts, indir, tmp_path / "out"),
           "--lpips", str(nets["lpips"]), "--fid", str(nets["fid"]), "--no-plot"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
                       env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert all(math.isfinite(float(r["fid"])) and math.isfinite(float(r["lpips_mean"])) for r in summary)
    assert not (tmp_path / "torch-home").exists()
