"""Captioning quality (BLEU-1..4, METEOR, ROUGE-L, CIDEr) through pycocoevalcap and its PTB tokenizer, and the share
of captions exactly right (equal to one of their references, once tokenized)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from typing import Any

from capsal.constraints import NamesFrom
from capsal.errors import MissingJavaError, UserError

CAPTION_METRICS = ("bleu", "meteor", "rouge", "cider", "exact")
CaptionMetricNames = NamesFrom(lambda: CAPTION_METRICS)  # a list of them, each at most once
_NEEDS_JAVA = "METEOR and the PTB tokenizer run on Java; install a JRE (e.g. apt-get install default-jre-headless)"


def java_found() -> bool:
    return shutil.which("java") is not None


def require_java() -> None:
    if not java_found():
        raise MissingJavaError(f"java was not found on PATH. {_NEEDS_JAVA}, or drop meteor from the metrics")


def caption_scores(
    predictions: dict[str, str], references: dict[str, list[str]], metrics: Iterable[str] = CAPTION_METRICS
) -> dict[str, float]:
    """Corpus-level scores keyed ``bleu1..bleu4``, ``meteor``, ``rouge_l``, ``cider``, ``exact`` (those asked for).

    Only ids present in both dicts are scored. Scores are pycocoevalcap's, in [0, 1] (CIDEr in [0, 10]); ``exact`` is
    the share of ids whose caption, PTB-tokenized (lower case, punctuation dropped), equals one of its references:
    BLEU stays high when most words are right, ``exact`` counts the captions a reader would accept as they are.
    """
    metrics = [m.lower() for m in metrics]
    unknown = sorted(set(metrics) - set(CAPTION_METRICS))
    if unknown:
        raise UserError(f"unknown captioning metrics {unknown}; choose from {list(CAPTION_METRICS)}")
    ids = sorted(set(predictions) & set(references))
    if not metrics or not ids:
        return {}
    require_java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in references[i]] for i in ids})
    res = tokenizer.tokenize({i: [{"caption": predictions[i] or "<empty>"}] for i in ids})
    scores: dict[str, float] = {}
    if "bleu" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"bleu{n + 1}": float(value) for n, value in enumerate(bleu)})
    if "meteor" in metrics:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        try:
            scores["meteor"] = float(meteor.compute_score(gts, res)[0])
        finally:
            _close_meteor(meteor)
    if "rouge" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        scores["cider"] = float(Cider().compute_score(gts, res)[0])
    if "exact" in metrics:
        scores["exact"] = sum(res[i][0] in gts[i] for i in ids) / len(ids)
    return scores


def _close_meteor(meteor) -> None:
    """Stop METEOR's Java process now rather than at garbage collection (its ``__del__`` repeats this harmlessly)."""
    process = meteor.meteor_p
    with meteor.lock:
        process.stdin.close()
        process.kill()
        process.wait()


def check_java(cfg: Any) -> None:
    """Captioning metrics asked for in a composed config (``model.caption_metrics``, ``caption_metrics``) need Java
    (the PTB tokenizer and METEOR run on it): one line before any work starts when it is missing."""
    from omegaconf import OmegaConf

    for key in ("model.caption_metrics", "caption_metrics"):
        metrics = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if metrics and not java_found():
            raise MissingJavaError(
                f"{key}={list(metrics)} needs Java (the PTB tokenizer and METEOR run on it) and java was not found on "
                f"PATH; install a JRE (e.g. apt-get install default-jre-headless) or set {key}=[]"
            )
