"""The LightningCLI shared by the recipes.

It gives the data module the model's tokenizer and mel bins (``connect``). An input error (a bad
manifest line, config or checkpoint) ends the run with its message alone (:mod:`qwen_audio.errors`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from qwen_audio.data import AudioTextDataModule
from qwen_audio.errors import TRACEBACK_VARIABLE, input_errors_reported
from qwen_audio.lit import QwenAudioModule
from qwen_audio.lit.resume import check_resumable, checkpoint_folders, newest_checkpoint

PRINT_TRACEBACK = "--print_traceback"
LIGHTNING_CKPT_VALUES = ("last", "best", "hpc")


class QwenAudioCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            PRINT_TRACEBACK,
            action="store_true",
            help=f"show the traceback of input errors too (or set {TRACEBACK_VARIABLE}=1)",
        )

    def connect_datamodule(self) -> None:
        """Give the data module the model's tokenizer and mel bins.

        With a released ``init_from`` folder, the tokenizer is that folder's own.
        """
        self.datamodule.connect(self.model.tokenizer, self.model.config.encoder.n_mels)

    def checked_ckpt_path(self) -> str | None:
        """The ``--ckpt_path`` file given on the command line, or None.

        None stands for no path or for one of Lightning's special values. A file that is missing,
        truncated or not a QwenAudioModule checkpoint is refused here, by name. Lightning would fail
        inside ``torch.load`` without naming it. ``last`` is resolved in :meth:`before_fit`.
        """
        ckpt_path = (
            self.config[self.config.subcommand].get("ckpt_path")
            if self.config.get("subcommand")
            else None
        )
        if (
            ckpt_path is None
            or ckpt_path in LIGHTNING_CKPT_VALUES
            or str(ckpt_path).startswith("registry")
        ):
            return None
        check_resumable(str(ckpt_path))
        return str(ckpt_path)

    def _parse_ckpt_path(self) -> None:
        self.checked_ckpt_path()
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        """Connect the data module, and resolve ``--ckpt_path last``.

        ``last`` resumes from the newest complete checkpoint on disk, refused if another preset
        wrote it.
        """
        self.connect_datamodule()
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") == "last":
            arguments["ckpt_path"] = newest_checkpoint(self.trainer)
            if arguments["ckpt_path"] is None:
                rank_zero_warn(
                    f"--ckpt_path last: no checkpoint in {checkpoint_folders(self.trainer)}; "
                    "training starts from the beginning"
                )
            else:
                check_resumable(arguments["ckpt_path"], self.model.hparams.preset)

    def before_validate(self) -> None:
        self.connect_datamodule()

    def before_test(self) -> None:
        self.connect_datamodule()

    def before_predict(self) -> None:
        self.connect_datamodule()


def run(
    cli: type[LightningCLI],
    model_class: type,
    datamodule_class: type,
    args: Sequence[str] | None = None,
) -> LightningCLI:
    """``cli(model_class, datamodule_class)`` on ``args`` (default: the command line).

    Input errors are reported.
    """
    argv = sys.argv[1:] if args is None else list(args)
    with input_errors_reported(print_traceback=PRINT_TRACEBACK in argv):
        return cli(model_class, datamodule_class, args=args, save_config_kwargs={"overwrite": True})


def main(args: list[str] | None = None) -> QwenAudioCLI:
    return run(QwenAudioCLI, QwenAudioModule, AudioTextDataModule, args)
