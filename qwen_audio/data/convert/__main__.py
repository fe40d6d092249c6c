"""``python -m qwen_audio.data.convert {hf,lhotse} SRC OUT``: see :mod:`qwen_audio.data.convert`."""

from __future__ import annotations

import argparse

from qwen_audio.data.convert import hf, lhotse_cuts
from qwen_audio.data.convert.fields import Fields


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_audio.data.convert",
        description="Convert a Hugging Face dataset or a lhotse CutSet to manifests.",
    )
    commands = parser.add_subparsers(dest="kind", required=True)
    for kind, help in (
        ("hf", "a save_to_disk folder, a parquet file, or a folder of parquet files"),
        ("lhotse", "a CutSet manifest (.jsonl or .jsonl.gz)"),
    ):
        command = commands.add_parser(kind, help=help)
        command.add_argument("src", help=help)
        command.add_argument(
            "out", help="folder for the manifests (and the audio files written out)"
        )
        command.add_argument("--fields", help="YAML file of the mapping below (flags override it)")
        if kind == "hf":
            for name in ("audio", "text", "language", "text_language", "task", "words"):
                command.add_argument(f"--{name}", help=f"column of the {name.replace('_', ' ')}")
            command.add_argument(
                "--split", action="append", help="convert only this split (repeatable)"
            )
        else:
            command.add_argument(
                "--words", help="alignment kind of the word timings (default: word)"
            )
        command.add_argument(
            "--default_language", help="language of rows that name none (default: en)"
        )
        command.add_argument("--default_task", help="task of rows that name none (default: asr)")
        command.add_argument(
            "--on_error",
            choices=("raise", "skip"),
            default="raise",
            help="stop at the first bad row, or skip bad rows and warn with their count",
        )
    args = vars(parser.parse_args(argv))
    kind, src, out, on_error, path = (
        args.pop(k) for k in ("kind", "src", "out", "on_error", "fields")
    )
    splits = args.pop("split", None)
    overrides = {k: v for k, v in args.items() if v is not None}
    fields = Fields.from_yaml(path, **overrides) if path else Fields(**overrides)
    if kind == "hf":
        written = list(hf.convert(src, out, fields, splits=splits, on_error=on_error).values())
    else:
        written = [lhotse_cuts.convert(src, out, fields, on_error=on_error)]
    for manifest in written:
        print(f"{manifest}: {sum(1 for _ in open(manifest, encoding='utf-8'))} lines")


if __name__ == "__main__":
    main()
