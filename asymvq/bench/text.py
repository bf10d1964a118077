"""Benchmark of text conditioning: ``python -m asymvq.bench text [options]``.

Measures, in one process and with the same thread count:

* encoding a batch of prompts (default 2: SD's unconditional + conditional pair) with asymvq's C text
  encoder, fp32 and bf16, model only (ids in) and end to end (prompts in, tokenizer included);
* the same forward with PyTorch + transformers' ``CLIPTextModel`` on the same weights (if both are
  installed; they are development tools, imported only here), and the ratio asymvq / torch
  (the target is <= 0.5);
* tokenizer throughput (prompts/s) on ASCII prompts and on varied ones (accents, CJK, emoji, HTML
  entities: the ftfy path), with a fresh word cache and a warm one.

Weights are random at full size (CLIP ViT-L/14) unless ``--checkpoint`` names an SD checkpoint or a
converted file. The tokenizer needs the CLIP vocabulary (``--vocab``, ``ASYMVQ_CLIP_VOCAB`` or a local
Hugging Face cache); without it the tokenizer numbers are skipped and the models run on fixed ids.
Timings are the best (and the median) of ``--rounds`` x ``--repeat`` runs after a warm-up, as in
``asymvq.bench ops``; asymvq and torch are timed in alternating blocks so that background load affects
both alike. Ratios and GFLOP/s use the best times.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import checkpoint, get_num_threads, set_num_threads, tables
from .. import config as _config
from .. import tokenizer as _tokenizer
from ..config import TextEncoderSpec
from ..text_encoder import TextEncoder, _load_weights, _text_spec
from . import harness
from .weights import random_weights

__all__ = ["run", "sample_prompts", "forward_flop"]

_PROMPTS = ("", "a photograph of an astronaut riding a horse on the moon, highly detailed, 4k")
_ASCII_WORDS = (
    "a photo of the cat dog astronaut riding horse moon city street night neon rain forest river mountain "
    "portrait painting by greg rutkowski artstation trending highly detailed 4k 8k octane render unreal "
    "engine sharp focus studio lighting bokeh cinematic dramatic golden hour sunset watercolor oil canvas "
    "castle dragon knight armor robot cyberpunk steampunk fantasy landscape ocean waves beach sand shells "
    "flowers garden tulips roses it's don't we're i'll \"quoted\" (parens) [brackets] {braces} #hashtag "
    "@user 1999 3.14 100% x2 -- ... !!! ?! , , , ."
).split()
_OTHER_WORDS = "café naïve résumé über 東京 夜景 桜 🐱 🚀 ✨ & &amp; &lt;3 ﬁne ｆｕｌｌｗｉｄｔｈ".split()


def sample_prompts(n: int, seed: int = 0, ascii_only: bool = False) -> List[str]:
    """``n`` prompts of 3 to 60 words: ASCII words, numbers and punctuation, plus (unless ``ascii_only``)
    accents, CJK, emoji, ligatures and HTML entities, which take the tokenizer's ftfy path."""
    rng = np.random.default_rng(seed)
    words = np.array(_ASCII_WORDS if ascii_only else _ASCII_WORDS + _OTHER_WORDS, dtype=object)
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 61)))) for _ in range(n)]


def forward_flop(spec: TextEncoderSpec, batch: int) -> float:
    """Multiply-add work (2 per MAC) of one forward: the linears plus both attention products."""
    tokens = batch * spec.max_positions
    linear = 2.0 * tokens * (4 * spec.width * spec.width + 2 * spec.width * spec.mlp)
    attention = 4.0 * batch * spec.max_positions**2 * spec.width
    return spec.layers * (linear + attention)


def _timed(fn: Callable[[], Any], repeat: int) -> List[float]:
    return harness.timed(fn, repeat)[0]


def _fmt(times: List[float]) -> str:
    return f"{1e3 * min(times):8.2f} ms (median {1e3 * statistics.median(times):8.2f})"


def _torch_model(spec: TextEncoderSpec, weights: Dict[str, np.ndarray], threads: int) -> Tuple[Any, Any, str]:
    """(torch, CLIPTextModel with ``weights``, version string); ImportError if either is missing."""
    torch = importlib.import_module("torch")
    transformers = importlib.import_module("transformers")
    torch.set_num_threads(threads)
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
    model = transformers.CLIPTextModel(cfg).eval()
    own = set(model.state_dict())
    inner = "text_model." if any(k.startswith("text_model.") for k in own) else ""
    state = {}
    for name, array in weights.items():
        key = inner + name[len(tables.TEXT_PREFIX) :]
        if key in own:
            data = checkpoint.bf16_to_float32(array) if array.dtype.kind == "u" else array
            state[key] = torch.from_numpy(np.array(data, dtype=np.float32))
    missing = [k for k in own if k not in state and not k.endswith("position_ids")]
    if missing:
        raise RuntimeError(f"torch reference: no weights for {', '.join(missing[:5])}")
    model.load_state_dict(state, strict=False)
    return torch, model, f"torch {torch.__version__}, transformers {transformers.__version__}"


def _torch_forward(torch: Any, model: Any, ids: Any) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=ids).last_hidden_state.float().numpy()


def _load(args: argparse.Namespace) -> Tuple[TextEncoderSpec, Dict[str, np.ndarray], str, Optional[str]]:
    """(spec, weights, where they come from, vocabulary embedded in the weights file or None)."""
    if args.config:
        spec = _text_spec(args.config)
    elif args.tiny:
        spec = _text_spec(_config.packaged_tiny_config("v1-inpainting-inference"))
    else:
        spec = TextEncoderSpec()
    if args.checkpoint:
        weights, embedded = _load_weights(args.checkpoint, spec)
        return spec, weights, f"weights from {args.checkpoint}", embedded
    return spec, random_weights(tables.text_encoder_tensors(spec), args.seed), "random weights", None


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the text benchmark with command-line arguments ``argv``; prints a report, returns 0."""
    parser = argparse.ArgumentParser(prog="python -m asymvq.bench text", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="SD checkpoint or converted file (default: random weights)")
    parser.add_argument("--config", help="diffusion config (default: v1-inpainting-inference, i.e. ViT-L/14)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test config instead of ViT-L/14")
    parser.add_argument("--vocab", help="CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz or a vocab.json+merges.txt dir)")
    parser.add_argument("--threads", type=int, default=0, help="threads for asymvq and torch (default: asymvq's)")
    parser.add_argument("--batch", type=int, default=2, help="prompts per batch (default 2)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating asymvq/torch blocks (default 3)")
    parser.add_argument("--precision", default="fp32,bf16", help="asymvq precisions (default fp32,bf16)")
    parser.add_argument("--tokenizer-prompts", type=int, default=5000, help="prompts for the throughput test")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument(
        "--roof", action="store_true", help="also measure the machine's GFLOP/s roof (asymvq.bench.roof)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    precisions = harness.parse_precisions(parser, args.precision)
    if args.batch < 1 or args.repeat < 1 or args.rounds < 1:
        parser.error("--batch, --repeat and --rounds must be >= 1")
    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()

    try:
        spec, weights, origin, embedded = _load(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"asymvq text encoder benchmark: width {spec.width}, {spec.layers} layers, {spec.heads} heads, "
        f"MLP {spec.mlp}; {origin}; batch {args.batch}; {threads} thread(s)"
    )

    # Tokenizer (optional: needs the vocabulary).
    tok: Optional[_tokenizer.CLIPTokenizer] = None
    try:
        start = time.perf_counter()
        tok = _tokenizer.load_tokenizer(args.vocab, embedded)
        where = args.vocab or ("the weights file" if embedded and not args.vocab else _tokenizer.find_vocab())
        print(f"tokenizer: vocabulary from {where}, loaded in {1e3 * (time.perf_counter() - start):.0f} ms")
    except _tokenizer.VocabNotFoundError as exc:
        print(
            "tokenizer: skipped (no CLIP vocabulary: pass --vocab or set ASYMVQ_CLIP_VOCAB); "
            f"models run on fixed ids. [{str(exc).splitlines()[0]}]"
        )
    prompts = [_PROMPTS[i % len(_PROMPTS)] for i in range(args.batch)]
    if tok is not None:
        ids = tok(prompts)
    else:
        ids = np.full((args.batch, spec.max_positions), _tokenizer.EOS_ID, dtype=np.int64)
        ids[:, 0] = _tokenizer.BOS_ID
        ids[:, 1:9] = np.arange(320, 328)

    encoders = {p: TextEncoder.from_config(spec, weights, vocab=tok, precision=p) for p in precisions}
    for p, enc in encoders.items():
        start = time.perf_counter()
        enc.encode_ids(ids)
        print(f"asymvq {p}: first call (plan build + weight packing) {1e3 * (time.perf_counter() - start):.0f} ms")
        enc.encode_ids(ids)

    # name -> zero-argument callable running one forward; torch models in fp32 and, as a bf16
    # baseline, a bf16 copy when asymvq bf16 is measured.
    torch_runs: Dict[str, Callable[[], Any]] = {}
    if args.no_torch:
        print("torch: skipped (--no-torch); asymvq numbers only")
    else:
        try:
            torch, model, version = _torch_model(spec, weights, threads)
            print(
                f"torch: {version}, CLIPTextModel ({model.config._attn_implementation} attention), "
                f"{torch.get_num_threads()} thread(s)"
            )
            torch_ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
            models = {"fp32": model}
            if "bf16" in precisions:
                models["bf16"] = copy.deepcopy(model).to(torch.bfloat16)
            for p, m in models.items():
                torch_runs[p] = functools.partial(_torch_forward, torch, m, torch_ids)
                torch_runs[p]()
                torch_runs[p]()
        except ImportError as exc:
            print(f"torch: not installed ({exc.name}); asymvq numbers only")

    results: Dict[str, List[float]] = {}
    for _ in range(args.rounds):
        for p, enc in encoders.items():
            results.setdefault(f"asymvq {p} model", []).extend(
                _timed(functools.partial(enc.encode_ids, ids), args.repeat)
            )
            if tok is not None:
                results.setdefault(f"asymvq {p} prompts", []).extend(
                    _timed(functools.partial(enc.encode, prompts), args.repeat)
                )
        for p, fn in torch_runs.items():
            results.setdefault(f"torch {p} model", []).extend(_timed(fn, args.repeat))

    flop = forward_flop(spec, args.batch)
    roofs: Dict[str, float] = {}
    if args.roof:
        from .ops import roof

        roofs = roof()
    print(f"\nencode a batch of {args.batch} ({flop / 1e9:.3g} GFLOP; best of {args.rounds * args.repeat} runs):")
    for name, times in results.items():
        rate = flop / min(times) / 1e9
        p = name.split()[1]
        of_roof = f", {100 * rate / roofs[p]:.0f}% of the {p} roof {roofs[p]:.0f}" if p in roofs else ""
        print(f"  {name:<24} {_fmt(times)}  {rate:6.0f} GFLOP/s{of_roof}")
    if torch_runs:
        print("ratio asymvq / torch, model only (target <= 0.5 against torch fp32):")
        for p in encoders:
            for q in torch_runs:
                r = min(results[f"asymvq {p} model"]) / min(results[f"torch {q} model"])
                print(f"  asymvq {p} / torch {q}: {r:.2f}x")
        for p, enc in encoders.items():
            ref_out = torch_runs["fp32"]()
            diff = float(np.abs(enc.encode_ids(ids) - ref_out).max())
            print(
                f"check: max |asymvq {p} - torch fp32| = {diff:.3g} (std of torch's output {float(ref_out.std()):.3g})"
            )

    if tok is not None:
        print(f"\ntokenizer throughput, {args.tokenizer_prompts} prompts of 3-60 words (one call each):")
        for label, ascii_only in (("ASCII", True), ("varied (non-ASCII, entities)", False)):
            texts = sample_prompts(args.tokenizer_prompts, args.seed, ascii_only)
            fresh = _tokenizer.load_tokenizer(args.vocab, embedded)
            cold = _tokenizer.throughput(fresh, texts)
            warm = max(_tokenizer.throughput(fresh, texts) for _ in range(2))
            print(f"  {label:<30} {cold:10,.0f} prompts/s (empty word cache) {warm:10,.0f} prompts/s (warm)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
