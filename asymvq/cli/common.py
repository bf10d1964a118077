"""What the drop-in command lines share: config resolution, argument checks, output checks,
summaries, and the one place that turns errors into exit codes (:func:`run_command`).

Exit codes: 0 done; 2 a problem the user can fix (one ``error: ...`` line on stderr, no
traceback); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM); 1 an internal error, i.e. a
bug in asymvq (one line asking for a report; ``ASYMVQ_DEBUG=1`` shows the traceback, and
also the traceback of user errors).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn, Optional, Sequence

from PIL import Image

from ..errors import Error
from ..io import config as config_mod

#: Set to 1 to see tracebacks instead of one-line errors.
DEBUG_ENV = "ASYMVQ_DEBUG"
#: How many items a long list of problems shows before "and N more".
MAX_LISTED = 10
#: numpy.random.RandomState's seed range (the start codes are drawn with it).
SEED_MAX = 2**32 - 1


class CLIError(Error):
    """A problem the user can fix; printed as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the drop-ins' error convention: one ``error: ...`` line, exit code 2
    (argparse's own prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def listing(items: Sequence[Any], limit: int = MAX_LISTED) -> str:
    """``a, b, c``; past ``limit`` items the first ``limit`` and ``and N more``."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def one_line(exc: BaseException) -> str:
    """The exception's message on one line; a list of weight problems (``exc.problems``) is
    cut to the first :data:`MAX_LISTED`, then "and N more"."""
    text = str(exc) or type(exc).__name__
    problems = getattr(exc, "problems", None)
    if problems:
        head = text.split("\n", 1)[0].rstrip(":")
        hint = " ".join(ln.strip() for ln in text.split("\n")[1 + len(problems) :] if ln.strip())
        text = f"{head}: " + "; ".join(str(p) for p in problems[:MAX_LISTED])
        if len(problems) > MAX_LISTED:
            text += f"; and {len(problems) - MAX_LISTED} more"
        if hint:
            text += f" ({hint})"
        return text
    return "; ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def _user_errors() -> tuple:
    # every asymvq error a user can cause derives from ValueError (CheckpointError, ConfigError,
    # WeightsError, ImageError) or OSError (VocabNotFoundError, missing files, a full disk)
    return (CLIError, ValueError, OSError)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cleanup (finally) like Ctrl-C does


def run_command(body: Callable[[], int]) -> int:
    """Runs a command's body and maps what it raises to the exit codes above. SIGTERM is
    turned into ``SystemExit(143)`` meanwhile, so temporary files are removed as on Ctrl-C."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: signals cannot be handled here
        previous = None
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:
        if debug:
            raise
        return fail(f"out of memory{': ' + str(e) if str(e) else ''} (try smaller images or fewer threads)")
    except _user_errors() as e:
        if debug:
            raise
        return fail(one_line(e))
    except Exception as e:
        if debug:
            raise
        print(
            f"error: internal error ({type(e).__name__}: {one_line(e)}): this is a bug in asymvq, please "
            f"report it; {DEBUG_ENV}=1 shows the traceback",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------------
# Argument checks: all run before any model is loaded


def check_seed(value: int, flag: str = "--seed", maximum: int = SEED_MAX) -> int:
    if not 0 <= value <= maximum:
        raise CLIError(f"{flag} must be between 0 and {maximum} (numpy RandomState seeds), got {value}")
    return value


def check_threads(value: Optional[int], flag: str = "--threads") -> Optional[int]:
    if value is not None and value < 1:
        raise CLIError(f"{flag} must be >= 1, got {value}")
    return value


def check_finite(value: float, flag: str) -> float:
    if not math.isfinite(value):
        raise CLIError(f"{flag} must be a finite number, got {value}")
    return value


def check_sampler(
    kind: str, steps: int, eta: float, spec: Any, steps_flag: str, eta_flag: Optional[str] = None
) -> None:
    """The sampler's own rules (SPEC §6: step counts the original's uniform discretisation can
    run; eta finite and >= 0; PLMS only with eta 0), reported under the flags' names."""
    from ..sampler import Sampler

    try:
        Sampler(kind="ddim", steps=steps, eta=0.0, config=spec)
    except ValueError as e:
        raise CLIError(f"{steps_flag} {steps}: {e}") from None
    try:
        Sampler(kind=kind, steps=steps, eta=eta, config=spec)
    except ValueError as e:
        raise CLIError(f"{eta_flag or 'eta'} {eta}: {e}") from None


def load_config(path: str, flag: str) -> Any:
    """The parsed config (cheap: no weights), for checks that depend on it."""
    try:
        return config_mod.load(path)
    except (ValueError, OSError) as e:
        raise CLIError(f"{flag} {path}: {one_line(e)}") from None


def load_diffusion_config(path: str, flag: str, kind: str, example: str) -> Any:
    """The diffusion config at ``path``, refused unless it is of ``kind`` (inpaint, txt2img)."""
    spec = load_config(path, flag)
    if not isinstance(spec, config_mod.DiffusionSpec) or spec.kind != kind:
        what = "an inpainting" if kind == "inpaint" else "a text-to-image"
        raise CLIError(f"{flag} {path} is not {what} diffusion config (e.g. {example})")
    return spec


def load_decoder_config(path: str, flag: str, example: str, conditional: bool = False) -> Any:
    """The autoencoder config at ``path``; with ``conditional``, refused unless its decoder takes
    the image and mask (the asymmetric decoder of inpaint_st)."""
    spec = load_config(path, flag)
    if not isinstance(spec, config_mod.AutoencoderSpec) or (conditional and not spec.decoder.conditional):
        what = "an asymmetric decoder config with condition" if conditional else "an autoencoder config"
        raise CLIError(f"{flag} {path} is not {what} (e.g. {example})")
    return spec


def resolve_config(path: str) -> str:
    """The config at ``path``; if it does not exist but names one of the original configs
    (e.g. the scripts' default ``configs/autoencoder/v1-inpainting-inference.yaml``), the copy
    shipped with asymvq."""
    if os.path.isfile(path):
        return path
    name = os.path.basename(path)
    try:
        return str(config_mod.packaged_config(name))
    except Exception:
        raise CLIError(f"config file not found: {path}") from None


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise CLIError(f"{what} not found: {path}")
    return path


def prepare_outdir(outdir: str, flag: str = "--outdir") -> Path:
    """Creates ``outdir`` and proves it is writable before any work starts."""
    p = Path(outdir)
    if p.exists() and not p.is_dir():
        raise CLIError(f"{flag} {outdir} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".asymvq-write-test-"):
            pass
    except OSError as e:
        raise CLIError(f"output directory {outdir} is not writable: {e.strerror or e}") from None
    return p


def same_file(a: "os.PathLike[str] | str", b: "os.PathLike[str] | str") -> bool:
    """Whether two paths are one file or folder (links and hard links included); False when
    either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def file_id(path: "os.PathLike[str] | str") -> Optional[tuple]:
    """(device, inode) of what ``path`` points to, or None when it does not exist: equal ids are
    one file, whatever the names and links."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def check_outputs(paths: Iterable[Path]) -> None:
    """Refuses outputs whose name is taken by something that is not a file (a folder): found
    before the computation, not at the save after it."""
    bad = [str(p) for p in paths if p.exists() and not p.is_file()]
    if bad:
        raise CLIError(f"output path {listing(bad)} exists and is not a file (a folder?): move it away")


def save_png(img: Image.Image, path: Path) -> None:
    """Writes to a temporary name and renames, so an interrupted run leaves no half file."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def summary(name: str, width: int, height: int, seconds: float, steps: int, extra: str = "") -> str:
    per = seconds / steps if steps else 0.0
    return f"{name}: {width}x{height}, {seconds:.1f} s, {per:.2f} s/step{extra}"


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def precision_arg(value: Optional[str]) -> str:
    """The scripts' --precision as the precision to build with: 'autocast' (the original's default) and
    'auto' -> bf16 where the CPU has native bf16, else fp32 (one line on stderr says which); 'full' ->
    fp32; fp32/bf16 as given. bf16 where it cannot run is a CLIError saying why."""
    from ..precision import resolve_precision

    m = {"autocast": "auto", "auto": "auto", "full": "fp32", "fp32": "fp32", "bf16": "bf16"}
    if value not in m:
        raise CLIError(f"--precision must be one of autocast, auto, full, fp32, bf16; got {value!r}")
    try:
        return resolve_precision(m[value])
    except RuntimeError as e:
        raise CLIError(f"--precision {value}: {e}") from None


def precision_type(value: str) -> str:
    """:func:`precision_arg` as an argparse ``type=`` (its errors become argparse's one-line usage error)."""
    import argparse

    try:
        return precision_arg(value)
    except CLIError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
