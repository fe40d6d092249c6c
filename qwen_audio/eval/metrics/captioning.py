"""Audio captioning scores of the release (Clotho): CIDEr-D, SPICE, SPIDEr = (CIDEr-D + SPICE) / 2.

The release scores with ``caption-evaluation-tools``, a copy of the MS-COCO caption evaluation code.
pycocoevalcap is that code packaged for Python 3. It has the same Java PTB tokenizer (lower case,
punctuation dropped) and scorers. The tokenizer's jar is inside the wheel, so CIDEr-D runs offline.
COCO's ``Cider`` is CIDEr-D: clipped n-gram counts, a Gaussian length penalty (σ = 6) and a factor
10. Its document frequencies are taken from this corpus's references. SPICE needs the Stanford
CoreNLP 3.6.0 jars, which pycocoevalcap downloads on first use. Where they are missing (no network),
SPICE and SPIDEr are ``None`` instead of a number, and the result says why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.spice import get_stanford_models
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from qwen_audio.eval.metrics._inputs import check_pairs

SPICE_JARS = tuple(
    os.path.join(
        get_stanford_models.SPICEDIR,
        get_stanford_models.SPICELIB,
        f"{get_stanford_models.JAR}{suffix}.jar",
    )
    for suffix in ("", "-models")
)


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here, or ``None`` when it can."""
    missing = [path for path in SPICE_JARS if not os.path.exists(path)]
    if not missing:
        return None
    return (
        f"SPICE needs Stanford CoreNLP {get_stanford_models.JAR}, missing here: {', '.join(missing)}. "
        "pycocoevalcap downloads it on first use, which needs network access; on a machine with network run "
        "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'`"
    )


def caption_scores(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str]
) -> dict[str, float | str | None]:
    """``{"CIDEr-D", "SPICE", "SPIDEr", "unavailable"}`` over the corpus.

    Each clip has one hypothesis and several reference captions. ``unavailable`` is ``None``, or the
    reason SPICE and SPIDEr are ``None``.
    """
    check_pairs(references, hypotheses)
    for index, captions in enumerate(references):
        if isinstance(captions, str) or not captions:
            raise ValueError(
                f"references[{index}] must be a non-empty list of captions, got {captions!r}"
            )
    if shutil.which("java") is None:
        raise RuntimeError(
            "captioning scores need Java on PATH: the PTB tokenizer and SPICE are Java programs"
        )
    tokenizer = PTBTokenizer()
    truth = tokenizer.tokenize(
        {
            clip: [{"caption": caption} for caption in captions]
            for clip, captions in enumerate(references)
        }
    )
    predicted = tokenizer.tokenize(
        {clip: [{"caption": caption}] for clip, caption in enumerate(hypotheses)}
    )
    cider_d = float(Cider().compute_score(truth, predicted)[0])
    reason = spice_unavailable_reason()
    if reason is not None:
        return {"CIDEr-D": cider_d, "SPICE": None, "SPIDEr": None, "unavailable": reason}
    spice = float(Spice().compute_score(truth, predicted)[0])
    return {
        "CIDEr-D": cider_d,
        "SPICE": spice,
        "SPIDEr": (cider_d + spice) / 2,
        "unavailable": None,
    }
