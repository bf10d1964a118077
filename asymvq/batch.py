"""Batch inpainting over a folder of pairs, on one machine or a Dask cluster (issue 14 §2).

Python::

    from asymvq.batch import run_batch
    from asymvq.compare import Job, DecoderSpec
    job = Job(config_d="v1-inpainting-inference.yaml", ckpt_d="sd-v1-5-inpainting.ckpt",
              decoders=(DecoderSpec("base", "autoencoder_kl_32x32x4.yaml", "base.ckpt"),), mode="inpaint")
    res = run_batch("pairs/", "out/", job)              # a LocalCluster sized to this machine
    res = run_batch("pairs/", "out/", job, scheduler="tcp://10.0.0.5:8786")   # an existing cluster
    res = run_batch("pairs/", "out/", job, cluster=False)                     # this process only

Command line: ``python -m asymvq batch --indir D --outdir O --ckpt_d ... [--decoder ...]
[--compare] [--scheduler tcp://host:port] [--workers N]``; with one ``--decoder`` and no ``--compare``
it writes inpaint_st's ``O/IMG.png``, otherwise :mod:`asymvq.compare`'s outputs and tables.

How the work is spread:

* **Where**: without a scheduler, a ``distributed.LocalCluster`` on 127.0.0.1 only, ``workers`` processes
  of 1 Dask thread each, each pipeline using ``threads`` asymvq (OpenMP) threads, with
  ``workers * threads <= cores`` and ``workers`` also bounded by the memory (a worker's memory limit is
  :func:`worker_memory_bytes`: the model files' size plus the activations, measured below). With
  ``scheduler="tcp://host:port"`` the same tasks go to that cluster; its workers must see the model files
  and the pairs **at the same paths** (a shared filesystem, or the same copy at the same path on each
  machine) and write to the same output folder.
* **Models once per worker**: each worker process keeps the :class:`~asymvq.compare.Models` it built in
  a per-process cache keyed by :attr:`Job.model_key` (files, sizes, mtimes, decoders, precision).
* **Tasks**: one per pair, keyed by the pair's name; ``pure=False`` so re-runs recompute.
* **Nothing lost**: every output is written to a temporary name and renamed; a pair's record
  (``O/.asymvq-records/IMG.json``: output sizes and sha256, metrics) is written last, so a pair counts as
  done only when the record exists and every output matches it. A re-run skips done pairs and recomputes
  the rest. A pair that raises (a corrupt file) goes to the ``failures`` table (``O/failures.csv``) with
  its error, and the others go on. A worker that dies (killed, out of memory) has its tasks rescheduled
  by Dask on the other workers; a pair whose task was on ``allowed_failures`` dying workers is marked
  failed (Dask's ``KilledWorker``), never retried forever; a pair lost with a worker that another pair
  killed is waited for while Dask runs it again. Known limit: a pair that was on ``allowed_failures``
  workers killed by such a culprit reaches that limit too and is reported failed; a re-run computes
  it. A local scheduler sends each worker only the pair it
  runs (``worker-saturation`` 1.0) to make that rare. On a remote cluster both are the scheduler's
  own settings (``distributed.scheduler.allowed-failures``, ``...worker-saturation``).
* **Deterministic**: every pair uses seed 0 (inpaint_st's rule), so its output does not depend on the
  worker, the number of workers or the order; the asymvq thread count is pinned by ``threads`` (the
  in-process run uses the same value) so even the reduction order is the same.
* **Progress**: a tqdm bar over pairs with images/min, and one line with the Dask dashboard's address
  when one runs, or saying that none runs because it needs ``bokeh`` (:func:`dashboard_status`).

Without Dask installed (``pip install "asymvq[cluster]"`` brings it) ``run_batch`` runs in this process
with the same outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _cli
from .compare import Job, Models, find_pairs, is_complete, process_pair, write_tables
from .errors import Error

PathLike = Union[str, os.PathLike]
PairList = Sequence[Tuple[PathLike, PathLike]]

#: Deaths of a worker running a pair before that pair is marked failed (local clusters).
__all__ = [
    "run_batch",
    "BatchResult",
    "ModelError",
    "run_pair_task",
    "plan_local",
    "worker_memory_bytes",
    "cores",
    "main",
]

ALLOWED_FAILURES = 2

_CACHE: Dict[str, Models] = {}
_CACHE_LOCK = threading.Lock()


class ModelError(Error, RuntimeError):
    """The models could not be built (bad config / checkpoint): every pair would fail the same way."""


def _models(job: Job) -> Models:
    """This process's models for ``job``, built on first use and kept (one worker = one process)."""
    key = job.model_key
    with _CACHE_LOCK:
        m = _CACHE.get(key)
        if m is None:
            try:
                m = Models(job)
            except Exception as e:  # noqa: BLE001 - any build failure is fatal for the whole run
                raise ModelError(f"{type(e).__name__}: {e}") from None
            _CACHE.clear()  # one model set per worker: a new job replaces the old one
            _CACHE[key] = m
        return m


def run_pair_task(job: Job, image: str, mask: str, outdir: str) -> dict:
    """The Dask task: one pair. Returns its record, or ``{"name", "error"}`` for a bad pair; raises only
    :class:`ModelError` (the caller stops the run) and what kills the process."""
    models = _models(job)
    try:
        return process_pair(models, job, image, mask, outdir)
    except Exception as e:  # noqa: BLE001 - a bad pair is reported, the others go on
        return {
            "name": os.path.basename(image),
            "image": image,
            "mask": mask,
            "error": f"{type(e).__name__}: {e}".strip(),
            "traceback": traceback.format_exc(limit=3),
        }


@dataclass
class BatchResult:
    """What :func:`run_batch` did."""

    outdir: Path
    done: List[dict] = field(default_factory=list)  # records computed in this run
    skipped: List[dict] = field(default_factory=list)  # records of pairs already complete
    failures: List[dict] = field(default_factory=list)  # {"image", "mask", "error"}
    seconds: float = 0.0
    workers: int = 0
    threads: Optional[int] = None
    dashboard: Optional[str] = None
    scheduler: Optional[str] = None  # the Dask scheduler's address (None: in-process)
    startup_seconds: float = 0.0  # starting the LocalCluster / connecting, within ``seconds``
    tables: Dict[str, Path] = field(default_factory=dict)

    @property
    def images_per_minute(self) -> float:
        return 60.0 * len(self.done) / self.seconds if self.seconds > 0 else 0.0

    @property
    def peak_rss_mb(self) -> float:
        """Largest peak resident memory of a process that ran pairs (MiB; 0 if none ran)."""
        return max((r.get("peak_rss_mb", 0.0) for r in self.done), default=0.0)

    def report(self) -> str:
        where = f"{self.workers} worker(s)" if self.workers else "in-process"
        return (
            f"{len(self.done)} done, {len(self.skipped)} already complete, {len(self.failures)} failed; "
            f"{self.seconds:.1f} s, {self.images_per_minute:.2f} images/min ({where}); "
            f"peak memory per worker {self.peak_rss_mb:.0f} MiB; outputs in {self.outdir}"
        )


def cores() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_memory_bytes(job: Job, image_pixels: int = 640 * 640) -> int:
    """A worker's memory limit (an upper estimate): 1.2 x the model files (weights are memory-mapped and
    repacked once), 2 GiB of activations per 512 x 512 pixels, and 256 MiB for the interpreter.

    Measured peaks (``BatchResult.peak_rss_mb``, ``tools/bench_batch.py``): tiny models at 64 x 64,
    about 415 MiB per worker (this estimate: 3.4 GiB, dominated by the activation term, which assumes
    full-size models); full-size bf16 checkpoints (2.35 GB) at 256 x 256, 4.3 GiB (estimate: 5.9 GiB).
    Pass ``workers`` explicitly to override the sizing that uses it.
    """
    files = [job.ckpt_d] + [d.ckpt for d in job.decoders if d.ckpt is not None]
    files += [f for f in (job.lpips, job.fid) if f is not None]  # the learned metrics' networks (torch)
    weights = sum(os.path.getsize(f) for f in dict.fromkeys(files) if os.path.exists(f))
    activations = int(2 * 2**30 * image_pixels / (512 * 512))
    return int(1.2 * weights) + activations + 256 * 2**20


def plan_local(job: Job, workers: Optional[int], threads: Optional[int]) -> Tuple[int, int]:
    """(workers, asymvq threads per worker) for a LocalCluster: ``workers * threads <= cores``, and no more
    workers than the memory holds."""
    n = cores()
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if workers is None:
        workers = max(1, n // (threads or 1)) if threads else 1
        try:
            import psutil

            avail = psutil.virtual_memory().available
            workers = max(1, min(workers, avail // worker_memory_bytes(job)))
        except ImportError:
            pass
    threads = threads or max(1, n // workers)
    if workers * threads > n:
        raise ValueError(f"{workers} workers x {threads} threads exceeds this machine's {n} cores")
    return int(workers), int(threads)


def _as_pairs(pairs: Union[PathLike, PairList]) -> List[Tuple[str, str]]:
    if isinstance(pairs, (str, os.PathLike)):
        p = os.fspath(pairs)
        got = find_pairs(None, p) if os.path.isfile(p) else find_pairs(p, None)
    else:
        got = [(Path(a), Path(b)) for a, b in pairs]
    names = [os.path.basename(a) for a, _ in got]
    if len(set(names)) != len(names):
        raise _cli.CLIError("two pairs share an image name: their outputs would overwrite each other")
    return [(os.path.abspath(a), os.path.abspath(b)) for a, b in got]


def run_batch(
    pairs: Union[PathLike, PairList],
    outdir: PathLike,
    job: Job,
    *,
    cluster: bool = True,
    scheduler: Optional[str] = None,
    workers: Optional[int] = None,
    threads: Optional[int] = None,
    progress: bool = True,
    plot: bool = True,
    allowed_failures: int = ALLOWED_FAILURES,
    timeout: Optional[float] = None,
    task: Optional[Callable[[Job, str, str, str], dict]] = None,
    connect_timeout: float = 30.0,
) -> BatchResult:
    """Runs ``job`` on every pair not already complete in ``outdir``; writes the tables; returns a summary.

    ``pairs``: a folder (NAME.png + NAME_mask.png), a list file ('IMAGE MASK' lines) or (image, mask)
    paths. ``cluster``: False runs in this process (also the fallback without Dask); ``scheduler``: the
    address of an existing Dask scheduler, else a LocalCluster of ``workers`` x ``threads`` (see
    :func:`plan_local`). ``threads`` also pins the asymvq threads of the in-process run (default: job's).
    ``timeout``: seconds before the wait for results gives up (None: no limit); ``connect_timeout``:
    seconds to reach ``scheduler``. ``task``: the per-pair
    function run on the workers (default :func:`run_pair_task`; an importable wrapper of it can add
    instrumentation).
    """
    task = task or run_pair_task
    pair_list = _as_pairs(pairs)
    out = _cli.prepare_outdir(os.fspath(outdir))
    res = BatchResult(out)
    todo = []
    for img, msk in pair_list:
        rec = is_complete(job, out, img, msk)
        if rec is not None:
            res.skipped.append(rec)
        else:
            todo.append((img, msk))
    try:
        import distributed  # noqa: F401
    except ImportError:
        if scheduler is not None:
            raise _cli.CLIError('--scheduler needs Dask: pip install "asymvq[cluster]"') from None
        cluster = False
    t0 = time.perf_counter()
    if not todo:
        pass  # everything is complete: no cluster to start
    elif not cluster and scheduler is None:
        from dataclasses import replace

        if threads is not None:
            job = replace(job, threads=threads)
        _run_local(job, todo, out, res, progress, task)
    else:
        _run_dask(
            job, todo, out, res, scheduler, workers, threads, progress, allowed_failures, timeout, task, connect_timeout
        )
    res.seconds = time.perf_counter() - t0
    res.tables = write_tables(out, job, res.skipped + res.done, res.failures, plot=plot)
    return res


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="pairs", unit="img", disable=not enabled)


def _account(res: BatchResult, rec: dict, bar, t0: float) -> None:
    if "error" in rec:
        res.failures.append({"image": rec.get("image", ""), "mask": rec.get("mask", ""), "error": rec["error"]})
    else:
        res.done.append(rec)
    bar.update(1)
    dt = time.perf_counter() - t0
    if dt > 0:
        bar.set_postfix_str(f"{60.0 * len(res.done) / dt:.2f} img/min, {len(res.failures)} failed")


def _run_local(job: Job, todo, out: Path, res: BatchResult, progress: bool, task) -> None:
    t0 = time.perf_counter()
    with _bar(len(todo), progress) as bar:
        for img, msk in todo:
            try:
                rec = task(job, img, msk, os.fspath(out))
            except ModelError as e:
                raise _cli.CLIError(str(e)) from None
            _account(res, rec, bar, t0)


def _run_dask(
    job: Job,
    todo,
    out: Path,
    res: BatchResult,
    scheduler: Optional[str],
    workers: Optional[int],
    threads: Optional[int],
    progress: bool,
    allowed_failures: int,
    timeout: Optional[float],
    task,
    connect_timeout: float,
) -> None:
    from dataclasses import replace

    import dask
    from distributed import Client, LocalCluster, as_completed

    local = None
    t_start = time.perf_counter()
    # worker-saturation 1.0: a worker holds only the pair it runs, so when it dies only that pair counts
    # a death (with queued pairs, innocent ones would reach allowed-failures beside a killer pair)
    with dask.config.set(
        {"distributed.scheduler.allowed-failures": allowed_failures, "distributed.scheduler.worker-saturation": 1.0}
    ):
        if scheduler is None:
            try:
                nw, nt = plan_local(job, workers, threads or job.threads)
            except ValueError as e:
                raise _cli.CLIError(str(e)) from None
            job = replace(job, threads=nt)
            # a free port on 127.0.0.1 even without bokeh: Dask's default (":8787") would listen on every
            # interface, and the HTTP port opens (health, metrics) whether or not bokeh serves pages
            dash = "127.0.0.1:0"
            local = LocalCluster(
                n_workers=nw,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=dash,
                memory_limit=worker_memory_bytes(job),
                silence_logs=40,
            )
            client = Client(local)
        else:
            if threads is not None:
                job = replace(job, threads=threads)
            try:
                client = Client(scheduler, timeout=connect_timeout)
            except (OSError, TimeoutError) as e:
                raise _cli.CLIError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        res.startup_seconds = time.perf_counter() - t_start
        try:
            res.scheduler = client.scheduler.address
            res.workers = len(client.scheduler_info().get("workers", {}))
            res.threads = job.threads
            res.dashboard, line = dashboard_status(client, local=local is not None)
            if progress:
                print(line, file=sys.stderr)
            if not todo:
                return
            # one map call: the scheduler sees all pairs as one group of root tasks and queues them
            # (worker-saturation), instead of handing the first few to workers ahead of time
            keys = [f"asymvq-pair-{job.model_key}-{os.path.basename(img)}" for img, _ in todo]
            fs = client.map(
                task,
                [job] * len(todo),
                [i for i, _ in todo],
                [m for _, m in todo],
                [os.fspath(out)] * len(todo),
                key=keys,
                pure=False,
            )
            futures = dict(zip(fs, todo))
            t0 = time.perf_counter()
            with _bar(len(futures), progress) as bar:
                # loop=: as_completed otherwise waits on the *default* client's loop (the first Client of
                # the process, e.g. a notebook's own), binding the futures' events to a loop that
                # f.result() then cannot use
                for f in as_completed(list(futures), timeout=timeout, loop=client.loop):
                    img, msk = futures[f]
                    _account(res, _outcome(f, img, msk, client, futures), bar, t0)
        finally:
            client.close()
            if local is not None:
                local.close()


def _outcome(f, img: str, msk: str, client, futures) -> dict:
    """A finished future's record, or a failure record (``killed`` set when its workers died)."""
    if f.status == "finished":
        return f.result()
    # lost with a worker that died beside another pair's: Dask runs it again elsewhere
    while f.status not in ("finished", "error", "cancelled"):
        time.sleep(0.05)
    if f.status == "finished":
        return f.result()
    err = f.exception() if f.status == "error" else None
    if err is None:
        return {"image": img, "mask": msk, "error": "CancelledError: the pair's task was cancelled"}
    if type(err).__name__ == "ModelError":
        client.cancel(list(futures))
        raise _cli.CLIError(str(err))
    name = type(err).__name__
    if name == "KilledWorker":
        return {"image": img, "mask": msk, "error": f"{name}: {err} (the pair's worker died repeatedly)"}
    return {"image": img, "mask": msk, "error": f"{name}: {err}"}


def dashboard_status(client, local: bool) -> Tuple[Optional[str], str]:
    """(the Dask dashboard's address or None, the one line that tells the user about it).

    The dashboard's pages are served by the scheduler and need ``bokeh`` where it runs. Without bokeh
    Dask still opens the scheduler's HTTP port (health, metrics), so for a LocalCluster (its scheduler
    runs in this process) bokeh's presence here decides; a remote scheduler's own bokeh cannot be
    seen from here, so its address is given with that condition.
    """
    if local and not _has_bokeh():
        return None, 'Dask dashboard: not running (it needs bokeh: pip install "bokeh>=3.1")'
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001 - the line is informative only; never fail a run over it
        services = {}
    if "dashboard" not in services:
        return None, "Dask dashboard: the scheduler serves none (it needs bokeh where the scheduler runs)"
    link = client.dashboard_link
    return link, f"Dask dashboard: {link}" + ("" if local else " (if bokeh is installed where the scheduler runs)")


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


# ---- command line ------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from .compare import add_model_args

    p = _cli.ArgumentParser(
        prog="python -m asymvq batch", description="inpaint_st / compare over a folder of pairs, on a Dask cluster"
    )
    add_model_args(p)
    p.add_argument(
        "--compare",
        action="store_true",
        help="write compare's outputs (O/NAME/IMG.png, strips) even for a single decoder",
    )
    p.add_argument("--scheduler", type=str, default=None, help="address of a running Dask scheduler (tcp://host:port)")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: sized to the machine)")
    p.add_argument("--no-cluster", action="store_true", help="run in this process (what happens without Dask)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _cli.run_command(lambda: run(parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    """The command's body (errors become exit codes in :func:`asymvq._cli.run_command`)."""
    from .compare import job_from_args

    mode = "compare" if args.compare or len(args.decoder) > 1 else "inpaint"
    job = job_from_args(args, mode)
    if args.workers is not None and args.workers < 1:
        raise _cli.CLIError(f"workers must be >= 1, got {args.workers}")
    if args.no_cluster and args.scheduler:
        raise _cli.CLIError("--no-cluster and --scheduler exclude each other")
    pairs = find_pairs(args.indir, args.list_file)
    res = run_batch(
        pairs,
        args.outdir,
        job,
        cluster=not args.no_cluster,
        scheduler=args.scheduler,
        workers=args.workers,
        threads=args.threads,
        progress=not args.no_progress,
        plot=not args.no_plot,
    )
    print(res.report())
    for f in res.failures:
        print(f"failed: {f['image']}: {f['error']}", file=sys.stderr)
    return 0 if not res.failures else 1


if __name__ == "__main__":
    sys.exit(main())
