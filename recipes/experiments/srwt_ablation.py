"""The paper's Tables 4-5 at toy scale: demo pretraining with and without its SRWT examples.

``python -m recipes.experiments.srwt_ablation [--epochs N] [--seeds S ...] [--out DIR]`` trains the
demo recipe twice from each seed. One run uses the full demo training set. The other uses it without
the SRWT lines, which are 25 % of them: every speech clip is an ASR and an SRWT example. Both runs
are then scored on the held-out ASR (WER en, CER zh, in %) and AQA (exact match) test lines, as
``recipes.evaluate`` scores them.

Both runs take the same number of optimizer steps (``--epochs`` epochs over the full set), not the
same number of epochs. The learning-rate schedule and the compute are then the same. The run without
SRWT sees its remaining examples a third more often. If the SRWT run still transcribes better, the
gain comes from the timestamped targets, not from more updates. Both validate on the whole
validation set. The table gives the last validation ASR loss, which both arms were trained for. The
"with SRWT" arm is the tag ablation's "hierarchical tags" arm. With the same ``--out``, each seed of
it trains once for both scripts.
"""

from __future__ import annotations

from collections.abc import Sequence

from recipes.experiments.common import (
    DemoSetup,
    Variant,
    ablation_arguments,
    all_tasks,
    run_ablation,
    write_manifest_without,
)

COLUMNS = ("ASR WER en", "ASR CER zh", "AQA acc")


def main(argv: Sequence[str] | None = None) -> str:
    args = ablation_arguments(__doc__.splitlines()[0]).parse_args(argv)
    setup = DemoSetup.from_arguments(args)
    train_without = write_manifest_without(
        setup.manifests["train"],
        args.out / "srwt_ablation_manifests" / "train_without_srwt.jsonl",
        {"srwt"},
    )
    variants = [
        all_tasks("with SRWT"),
        Variant("without SRWT", "srwt_ablation-without", {"train": [str(train_without)]}),
    ]
    note = (
        "Paper (Tables 4-5, without vs with SRWT): LibriSpeech test-clean WER 2.22 vs 2.04, Aishell1 test 1.71 vs "
        "1.29, ClothoAQA acc 0.5648 vs 0.5795. Same seed, same other data, same optimizer steps."
    )
    return run_ablation(
        "SRWT ablation (demo corpus)",
        "srwt_ablation",
        variants,
        setup,
        args.out,
        COLUMNS,
        {"asr", "aqa"},
        note,
        args.seeds,
        loss="val/loss_asr",
    )


if __name__ == "__main__":
    main()
