"""Every required-tensor table is exactly what it was before the tables came from the C models.

``tests/data/tables_snapshot.json`` was written from the pure-Python tables (main at 60ff0c0): for each
packaged config, real and tiny, and each table function, the count, the parameter count, a hash of the
ordered (name, shape) list, and the first and last entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from asymvq import config, tables

SNAPSHOT = json.loads((Path(__file__).parent / "data" / "tables_snapshot.json").read_text())


def _digest(table: tables.Table) -> str:
    return hashlib.sha256(json.dumps([[n, list(s)] for n, s in table.items()]).encode()).hexdigest()[:20]


def _calls(spec: Any) -> dict[str, Callable[[], tables.Table]]:
    calls: dict[str, Callable[[], tables.Table]] = {}
    if isinstance(spec, config.DiffusionSpec):
        calls["unet_tensors"] = lambda: tables.unet_tensors(spec.unet)
        calls["text_encoder_tensors"] = lambda: tables.text_encoder_tensors(spec.text_encoder)
        ae, prefix = spec.first_stage, "first_stage_model."
    else:
        ae, prefix = spec, ""
    calls["vae_encoder_tensors"] = lambda: tables.vae_encoder_tensors(ae)
    calls["decoder_tensors"] = lambda: tables.decoder_tensors(ae, prefix)
    calls["cond_encoder_tensors"] = lambda: tables.cond_encoder_tensors(ae, prefix)
    calls["up_layers_tensors"] = lambda: tables.up_layers_tensors(ae, prefix)
    return calls


def _cases() -> list[tuple[str, str, str]]:
    return [tuple(key.split("/")) for key in sorted(SNAPSHOT)]  # type: ignore[misc]


@pytest.mark.parametrize("size, name, function", _cases())
def test_table_equals_the_snapshot_taken_before_the_c_models_described_it(size: str, name: str, function: str) -> None:
    path = (config.packaged_tiny_config if size == "tiny" else config.packaged_config)(name)
    table = _calls(config.load(path))[function]()
    items = list(table.items())
    got = {
        "count": len(table),
        "params": tables.count_parameters(table),
        "sha256": _digest(table),
        "first": [items[0][0], list(items[0][1])],
        "last": [items[-1][0], list(items[-1][1])],
    }
    assert got == SNAPSHOT[f"{size}/{name}/{function}"]


def test_snapshot_covers_every_packaged_config_and_table() -> None:
    expected = {
        f"{size}/{name}/{function}"
        for size, tiny in (("real", False), ("tiny", True))
        for name in config.packaged_config_names(tiny=tiny)
        for function in _calls(config.load((config.packaged_tiny_config if tiny else config.packaged_config)(name)))
    }
    assert set(SNAPSHOT) == expected


def test_real_unet_table_is_recorded_without_weight_memory() -> None:
    # 860 M parameters: copying them would take seconds and 3.4 GB; recording takes milliseconds.
    spec = config.load(config.packaged_config("v1-inpainting-inference.yaml"))
    start = time.perf_counter()
    table = tables.unet_tensors(spec.unet)
    assert time.perf_counter() - start < 0.5
    assert len(table) == 686


def test_table_of_a_config_the_c_model_refuses_raises_its_message() -> None:
    spec = config.load(config.packaged_tiny_config("v1-t2i-inference.yaml")).unet
    bad = dataclasses.replace(spec, model_channels=spec.model_channels + 1)
    with pytest.raises(ValueError, match="model_channels must be a positive multiple of 32"):
        tables.unet_tensors(bad)
