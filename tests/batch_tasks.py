"""Per-pair task wrappers for tests/test_batch.py, importable by Dask's worker processes."""

import os

from asymvq.batch import run_pair_task


def kills_its_worker_on_pair3(job, image, mask, outdir):
    """Like run_pair_task, but the pair ``pair3.png`` kills the process running it, every time."""
    if os.path.basename(image) == "pair3.png":
        os._exit(1)
    return run_pair_task(job, image, mask, outdir)
