"""Writes notebooks/*.ipynb (outputs stripped). Run after editing the cells here:
``python tools/make_notebooks.py``. CI executes the notebooks on tiny models."""
from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1] / "notebooks"


def nb(cells):
    book = nbf.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out = []
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            out.append(nbf.v4.new_markdown_cell(src))
        else:
            c = nbf.v4.new_code_cell(src)
            if kind == "params":
                c.metadata["tags"] = ["parameters"]
            out.append(c)
    book.cells = out
    return book


INPAINT = [
    ("md", """
# Inpainting with the asymmetric VQGAN decoder

`inpaint_st.py` as a Python object. Set the paths in the next cell to your checkpoints;
left as `None`, the notebook runs the same pipeline on the tiny configs with random
weights (seconds, and a meaningless picture)."""),
    ("params", """
CONFIG_D = None   # e.g. "v1-inpainting-inference.yaml"
CKPT_D = None     # e.g. "sd-v1-5-inpainting.ckpt"
CONFIG = None     # e.g. "autoencoder_kl_32x32x4.yaml" (base), _large, _large2
CKPT = None       # e.g. "base.ckpt"
VOCAB = None      # CLIP bpe_simple_vocab_16e6.txt.gz (or set ASYMVQ_CLIP_VOCAB)
IMAGE = None      # a NAME.png with NAME_mask.png beside it; None: a generated picture
STEPS = 50
PRECISION = "fp32"
"""),
    ("code", """
import asymvq
from asymvq.pipelines import InpaintPipeline
from asymvq import demo
print(asymvq.info())
if CKPT_D:
    pipe = InpaintPipeline.from_original(CONFIG_D, CKPT_D, CONFIG, CKPT, vocab=VOCAB, precision=PRECISION)
else:
    pipe, note = demo.build_pipeline(PRECISION)
    print("tiny random-weight models;", note)
pipe
"""),
    ("code", """
from PIL import Image
if IMAGE:
    image, mask = Image.open(IMAGE), Image.open(IMAGE[:-4] + "_mask.png")
else:
    image, mask = demo.demo_inputs(256)
result = pipe(image, mask, steps=STEPS)
print({k: round(v, 2) for k, v in result.timings.items()}, "seconds")
"""),
    ("code", """
from asymvq.metrics import preservation_error, psnr_outside_mask
from asymvq.image import inpaint_size
size = result.images[0].size
src = image.convert("RGB").resize(size) if image.size != size else image.convert("RGB")
m = mask.convert("L").resize(size, Image.NEAREST)
print(f"pre_error {preservation_error(src, result.images[0], m) * 1e5:.2f}e-5, "
      f"PSNR outside the mask {psnr_outside_mask(src, result.images[0], m):.1f} dB")
side = Image.new("RGB", (size[0] * 3, size[1]))
for i, im in enumerate([src, m.convert("RGB"), result.images[0]]):
    side.paste(im, (i * size[0], 0))
side
"""),
]

TXT2IMG = [
    ("md", """
# Text-to-image with the asymmetric decoder (no condition)

`txt2img.py` as a Python object. Set the paths to your checkpoints; left as `None`,
the tiny configs with random weights are used."""),
    ("params", """
CONFIG = None     # e.g. "v1-t2i-inference.yaml"
CKPT = None       # e.g. "v1-5-pruned-emaonly.ckpt"
CONFIG_C = None   # e.g. "autoencoder_kl_woc_32x32x4.yaml"
CKPT_C = None     # e.g. "base.ckpt"
VOCAB = None
PROMPT = "a painting of a virus monster playing guitar"
SIZE = 512 if CKPT else 128
STEPS = 50
SAMPLER = "ddim"   # or "plms"
PRECISION = "fp32"
"""),
    ("code", """
import asymvq
from asymvq.pipelines import Txt2ImgPipeline
from asymvq import demo
if CKPT:
    pipe = Txt2ImgPipeline.from_original(CONFIG_C, CKPT_C, CONFIG, CKPT, vocab=VOCAB, precision=PRECISION)
else:
    pipe, note = demo.build_txt2img_pipeline(PRECISION)
    print("tiny random-weight models;", note)
pipe
"""),
    ("code", """
result = pipe(PROMPT, height=SIZE, width=SIZE, steps=STEPS, sampler=SAMPLER, seed=42)
print(f"{result.seconds:.1f} s, {result.timings['sample'] / STEPS * 1000:.0f} ms/step")
result.images[0]
"""),
]

DECODERS = [
    ("md", """
# The asymmetric decoder versus SD's decoder

One latent, two decoders: SD's vanilla KL decoder and the asymmetric VQGAN decoder, which
also sees the masked image. Outside the mask the asymmetric decoder should reproduce the
input (the paper's preservation error drops from 1082.8e-5 to 2.1e-5). With the tiny random
weights used when no checkpoints are given, the numbers only show the mechanics."""),
    ("params", """
CONFIG_D = None   # SD inpainting config (its first stage: encoder + vanilla decoder)
CKPT_D = None
CONFIG = None     # asymmetric decoder config
CKPT = None
IMAGE = None
"""),
    ("code", """
import numpy as np
from PIL import Image
from asymvq import demo, config
from asymvq.autoencoder import Autoencoder
from asymvq.image import load_pair, to_pil
from asymvq.metrics import preservation_error
if CKPT_D:
    vanilla = Autoencoder.from_config(CONFIG_D, CKPT_D, parts="both")
    asym = Autoencoder.from_config(CONFIG, CKPT)
else:
    cd = config.packaged_tiny_config("v1-inpainting-inference")
    cc = config.packaged_tiny_config("autoencoder_kl_32x32x4")
    vanilla = Autoencoder.from_config(cd, demo.random_first_stage_weights(config.load(cd), 0), parts="both")
    asym = Autoencoder.from_config(cc, demo.random_weights(config.load(cc), 1))
if IMAGE:
    x, m, _ = load_pair(IMAGE, IMAGE[:-4] + "_mask.png")
else:
    img, msk = demo.demo_inputs(256)
    x, m, _ = load_pair(img, msk)
"""),
    ("code", """
z = vanilla.encode(x)                       # the posterior mode: one latent for both decoders
plain = vanilla.decode(z)
cond = asym.decode(z, image=x, mask=m)
for name, out in [("vanilla", plain), ("asymmetric", cond)]:
    print(f"{name:10s} pre_error {preservation_error(x, out, m) * 1e5:10.2f}e-5")
W = x.shape[-1]
side = Image.new("RGB", (W * 3, x.shape[-2]))
for i, im in enumerate([to_pil(x)[0], to_pil(plain)[0], to_pil(cond)[0]]):
    side.paste(im, (i * W, 0))
side
"""),
]

COMPARE = [
    ("md", """
# Comparing decoders on the same latents

The paper's table: one inpainting per image, decoded by SD's vanilla decoder and by the asymmetric
base / 1.5x / 2x decoders, compared on how well the known region (outside the mask) is preserved.
`python -m asymvq compare` does this for a folder; here through `asymvq.batch.run_batch` (which runs
the same work on a Dask cluster when asked). Set the paths below to your checkpoints; left as `None`,
the notebook writes tiny random-weight models and generated pictures (seconds, meaningless numbers)."""),
    ("params", """
CONFIG_D = None   # e.g. "v1-inpainting-inference.yaml"
CKPT_D = None     # e.g. "sd-v1-5-inpainting.ckpt" (its first stage is the vanilla decoder)
DECODERS = {}     # e.g. {"base": ("autoencoder_kl_32x32x4.yaml", "base.ckpt"),
                  #       "large2": ("autoencoder_kl_32x32x4_large2.yaml", "large2.ckpt")}
VOCAB = None      # CLIP bpe_simple_vocab_16e6.txt.gz (or set ASYMVQ_CLIP_VOCAB)
INDIR = None      # folder of NAME.png + NAME_mask.png; None: three generated pairs
OUTDIR = "compare_out"
STEPS = 50
PRECISION = "fp32"
LPIPS = None      # optional: an LPIPS network as a torch.export file (see asymvq.quality; pip install "asymvq[quality]")
FID = None        # optional: an InceptionV3 feature network as a torch.export file (FID per decoder)
"""),
    ("code", """
import os
import tempfile
from pathlib import Path
from PIL import Image, ImageDraw
from asymvq import checkpoint, config, demo, tables
from asymvq.tokenizer import VocabNotFoundError, find_vocab

tmp = Path(tempfile.mkdtemp(prefix="asymvq-compare-"))
if CKPT_D is None:  # tiny random-weight models written to files, as real checkpoints would be
    CONFIG_D = str(config.packaged_tiny_config("v1-inpainting-inference"))
    spec_d = config.load(CONFIG_D)
    w = demo.random_weights(spec_d, 0)
    w.update(demo.random_first_stage_weights(spec_d, 1))
    CKPT_D = str(tmp / "sd-inpaint.safetensors")
    checkpoint.save_safetensors(CKPT_D, w)
    for i, (name, cfg) in enumerate([("base", "autoencoder_kl_32x32x4"), ("large2", "autoencoder_kl_32x32x4_large2")]):
        path = config.packaged_tiny_config(cfg)
        checkpoint.save_safetensors(tmp / f"{name}.safetensors", demo.random_weights(config.load(path), 2 + i))
        DECODERS[name] = (str(path), str(tmp / f"{name}.safetensors"))
if VOCAB is None:
    try:
        VOCAB = str(find_vocab(None))
    except (VocabNotFoundError, FileNotFoundError):  # a stand-in vocabulary of CLIP's shape
        VOCAB = str(tmp / "merges.txt")
        Path(VOCAB).write_text("#version: 0.2\\n" + "".join(f"{a} {b}\\n" for a, b in demo.synthetic_merges()),
                               encoding="utf-8")
if INDIR is None:
    INDIR = tmp / "pairs"
    INDIR.mkdir()
    for i in range(3):
        img, mask = demo.demo_inputs(128)
        mask = Image.new("L", img.size, 0)
        ImageDraw.Draw(mask).rectangle([20 + 15 * i, 30, 80 + 15 * i, 100], fill=255)
        img.rotate(90 * i).save(INDIR / f"scene{i}.png")
        mask.save(INDIR / f"scene{i}_mask.png")
print("diffusion:", CKPT_D, "| decoders: vanilla,", ", ".join(DECODERS))
"""),
    ("code", """
from asymvq.batch import run_batch
from asymvq.compare import DecoderSpec, Job

job = Job(config_d=CONFIG_D, ckpt_d=CKPT_D, vocab=VOCAB, steps=STEPS, precision=PRECISION, mode="compare",
          decoders=(DecoderSpec("vanilla"),) + tuple(DecoderSpec(n, c, k) for n, (c, k) in DECODERS.items()),
          lpips=LPIPS, fid=FID)
res = run_batch(INDIR, OUTDIR, job, cluster=False)   # cluster=True: a Dask LocalCluster; scheduler="tcp://..."
print(res.report())
"""),
    ("md", "Each strip: the original, the masked input, then every decoder's result; the hole is outlined in red."),
    ("code", """
from IPython.display import display
for p in sorted(Path(OUTDIR, "strips").glob("*.png")):
    print(p.name)
    display(Image.open(p))
"""),
    ("md", """
The table: per decoder, mean and standard deviation over the images of the preservation error
(MSE outside the mask, images in [0, 1]), PSNR and SSIM outside the mask; with `LPIPS` set, LPIPS
over the whole image and outside the mask, and with `FID` set, each decoder's FID against the
originals (over the folder). Per-image rows are in `metrics.csv`, both in `metrics.json`."""),
    ("code", """
import csv
rows = list(csv.DictReader(open(Path(OUTDIR, "summary.csv"))))
print(f"{'decoder':10s} {'n':>3s} {'pre_error (1e-5)':>22s} {'PSNR (dB)':>16s} {'SSIM':>16s}")
for r in rows:
    f = {k: float(v) for k, v in r.items() if k not in ("decoder", "n")}
    print(f"{r['decoder']:10s} {r['n']:>3s} {f['pre_error_mean'] * 1e5:11.1f} ± {f['pre_error_std'] * 1e5:8.1f} "
          f"{f['psnr_mean']:7.2f} ± {f['psnr_std']:5.2f} {f['ssim_mean']:7.4f} ± {f['ssim_std']:6.4f}"
          + (f"  LPIPS {f['lpips_mean']:.4f} (outside mask {f['lpips_known_mean']:.4f})" if "lpips_mean" in f else "")
          + (f"  FID {f['fid']:.2f}" if "fid" in f else ""))
Image.open(Path(OUTDIR, "metrics.png"))
"""),
]

if __name__ == "__main__":
    ROOT.mkdir(exist_ok=True)
    for name, cells in [("inpainting", INPAINT), ("txt2img", TXT2IMG), ("asymmetric_decoder", DECODERS),
                        ("compare_decoders", COMPARE)]:
        nbf.write(nb(cells), ROOT / f"{name}.ipynb")
        print("wrote", ROOT / f"{name}.ipynb")
