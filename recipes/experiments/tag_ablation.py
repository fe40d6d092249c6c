"""The paper's interference argument at toy scale: hierarchical tags vs. a flat per-dataset prompt.

``python -m recipes.experiments.tag_ablation [--epochs N] [--seeds S ...] [--out DIR]`` trains the
demo recipe twice from each seed, on the same data and steps. One run uses the release's
hierarchical tags
(``<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>``...). The other uses
the flat baseline of :mod:`recipes.experiments.flat_prompts`: one dataset-ID token per dataset. That
is the "dataset ID" scheme the paper's §3.2 calls the way earlier multi-task models avoided
interference.

Each model is evaluated on every test task with its own prompt style, as ``recipes.evaluate`` scores
the demo corpus. The scores are ASR and SRWT WER en / CER zh (%), SRWT alignment shift (AAS, ms) per
language, and AQA, ASC and MNA exact-match accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

from recipes.experiments.common import (
    DemoSetup,
    Variant,
    ablation_arguments,
    all_tasks,
    run_ablation,
)

COLUMNS = (
    "ASR WER en",
    "ASR CER zh",
    "SRWT WER en",
    "SRWT CER zh",
    "SRWT AAS ms en",
    "SRWT AAS ms zh",
    "AQA acc",
    "ASC acc",
    "MNA acc",
)
TASKS = {"asr", "srwt", "aqa", "asc", "mna"}


def main(argv: Sequence[str] | None = None) -> str:
    args = ablation_arguments(__doc__.splitlines()[0]).parse_args(argv)
    setup = DemoSetup.from_arguments(args)
    variants = [
        all_tasks("hierarchical tags"),
        Variant("flat dataset ID", "tag_ablation-flat", {}, "flat"),
    ]
    note = (
        "Paper §3.2: conditioning on shared and specific hierarchical tags lets datasets share knowledge without "
        "interfering; the flat baseline gives each dataset (task x audio language) its own ID token instead."
    )
    return run_ablation(
        "Tag ablation (demo corpus)",
        "tag_ablation",
        variants,
        setup,
        args.out,
        COLUMNS,
        TASKS,
        note,
        args.seeds,
    )


if __name__ == "__main__":
    main()
