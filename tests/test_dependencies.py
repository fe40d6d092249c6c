"""The private APIs in docs/dependencies.md still exist: an upgrade that drops one fails here."""

from __future__ import annotations

import importlib

import lightning as L
import pytest

PRIVATE_APIS = [
    ("lightning.pytorch.cli", "LightningCLI._parse_ckpt_path"),
    (
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        "_CheckpointConnector.hpc_save_path",
    ),
    ("litserve.loops.base", "LitLoop.get_request"),
    ("litserve.loops.base", "LitLoop.put_response"),
    ("litserve.loops.base", "LitLoop.put_error_response"),
    ("litserve.utils", "LitAPIStatus"),
    ("litserve.utils", "LoopResponseType"),
    ("litserve.utils", "ResponseBufferItem"),
    ("litserve.specs.base", "LitSpec"),
]


@pytest.mark.parametrize(("module", "name"), PRIVATE_APIS)
def test_private_api_exists(module, name):
    found = importlib.import_module(module)
    for part in name.split("."):
        assert hasattr(found, part), f"{module}.{name} is gone: see docs/dependencies.md"
        found = getattr(found, part)


def test_trainer_counts_batches_where_the_data_module_reads_them():
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    assert trainer.fit_loop.epoch_loop.batch_progress.total.processed == 0
    assert type(trainer._checkpoint_connector).__name__ == "_CheckpointConnector"
