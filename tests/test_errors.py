"""asymvq.Error (issue 16): every exception asymvq raises on purpose derives from it, and still from
the builtin exception it raised before, so that no caller that catches the builtin one breaks."""

from __future__ import annotations

import numpy as np
import pytest

import asymvq
from asymvq import _core, errors
from asymvq._cli import CLIError
from asymvq.batch import ModelError
from asymvq.checkpoint import CheckpointError
from asymvq.config import ConfigError
from asymvq.diffusers_io import DiffusersError
from asymvq.image import ImageError
from asymvq.infer import InferenceError
from asymvq.quality import QualityError
from asymvq.tables import WeightsError
from asymvq.tokenizer import VocabNotFoundError

PUBLIC = [
    (ConfigError, ValueError),
    (CheckpointError, ValueError),
    (WeightsError, ValueError),
    (ImageError, ValueError),
    (DiffusersError, ValueError),
    (InferenceError, ValueError),
    (ModelError, RuntimeError),
    (QualityError, ValueError),
    (VocabNotFoundError, FileNotFoundError),
    (CLIError, Exception),
    (errors.InvalidInputError, ValueError),
    (errors.DTypeError, TypeError),
    (errors.OutOfMemoryError, MemoryError),
    (errors.NumericError, FloatingPointError),
    (errors.EngineError, RuntimeError),
]


@pytest.mark.parametrize("cls, builtin", PUBLIC, ids=[c.__name__ for c, _ in PUBLIC])
def test_every_public_exception_is_an_asymvq_error_and_its_old_builtin(cls: type, builtin: type) -> None:
    assert issubclass(cls, asymvq.Error)
    assert issubclass(cls, builtin)


def test_asymvq_error_is_one_class_held_by_the_core() -> None:
    assert asymvq.Error is errors.Error is _core.Error
    assert asymvq.Error.__module__ == "asymvq" and "Error" in asymvq.__all__
    assert issubclass(asymvq.Error, Exception)


def test_ctrl_c_stays_a_keyboard_interrupt_not_an_asymvq_error() -> None:
    assert not issubclass(KeyboardInterrupt, asymvq.Error)


def test_a_refused_argument_in_c_raises_an_asymvq_value_error() -> None:
    with pytest.raises(errors.InvalidInputError, match="num_threads must be between 1 and 4096"):
        asymvq.set_num_threads(0)


def test_a_wrong_dtype_in_the_binding_raises_an_asymvq_type_error() -> None:
    with pytest.raises(errors.DTypeError, match="x must have dtype float32"):
        _core.ops.softmax(np.zeros(3, np.float64))


def test_a_failure_inside_the_c_core_raises_an_asymvq_error() -> None:
    # an op whose shapes the C core (not the binding) refuses
    with pytest.raises(asymvq.Error) as info:
        _core.ops.add(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
    assert isinstance(info.value, ValueError)
