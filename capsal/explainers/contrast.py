"""Contrastive maps, "why this word rather than that one": a foil sentence with one word per word, and what an
explainer then explains of each word, ``log p(word) - log p(foil word)``, both given the sentence's own words before
it (:meth:`Foil.explained`).

A foil word of one token where the word is one token takes the word's target column: its log-probability is read
from the same teacher-forced pass as the word's. A foil word whose tokens differ in number or place from the word's
(a subword tokenizer) is scored in a spliced row, the sentence's tokens before the word and then the foil word's: all
such rows of a batch go through the model in one more batched pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from capsal.errors import UserError
from capsal.text import Tokenizer


@dataclass
class Foil:
    """The foil of a batch of sentences ``(B, L)``.

    ``targets`` ``(B, n)``: the foil's token at each target column where it takes the word's place (the sentence's
    own token elsewhere, so those columns contrast nothing); ``words``: each row's foil words. Spliced rows (foil
    words with other tokens than their word's, whose word's columns are ``scored_apart``): ``spliced`` ``(S, L')``
    token rows, the sentence row each belongs to
    (``owners``), the target column of its word's first token (``columns``) and the target columns of the foil
    word's tokens inside the spliced row (``spans``, half-open)."""

    targets: torch.Tensor
    words: list[list[str]]
    scored_apart: torch.Tensor | None = None  # (B, n) True at the target columns of words with spliced foils
    spliced: torch.Tensor | None = None
    owners: torch.Tensor | None = None
    columns: torch.Tensor | None = None
    spans: list[tuple[int, int]] | None = None

    def gathered(self, logprobs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(foil_t)`` ``(N, n)`` at each target column from the sentence's own pass (``rows``: the sentence
        of each row of ``logprobs``; None: the batch's rows)."""
        width = logprobs.shape[1]
        targets = self.targets if rows is None else self.targets[rows]
        gathered = logprobs.gather(-1, targets[:, :width, None])[..., 0]
        if self.scored_apart is None:
            return gathered
        apart = self.scored_apart if rows is None else self.scored_apart[rows]
        return gathered.masked_fill(apart[:, :width], 0.0)  # their foil is subtracted from the spliced pass

    def spliced_logprobs(
        self,
        model: Any,
        inputs: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        rows: torch.Tensor,
        width: int,
    ) -> torch.Tensor | None:
        """``(N, n)``: each spliced foil word's log-probability (its tokens' summed) at its word's first column, 0
        elsewhere; the rows' inputs are encoded again with the spliced sentences (one batched pass). None when no
        row has a spliced word."""
        if self.spliced is None:
            return None
        pairs = (rows[:, None] == self.owners.to(rows.device)[None, :]).nonzero()  # (P, 2): input row, spliced row
        if pairs.numel() == 0:
            return None
        row, spliced = pairs[:, 0], pairs[:, 1]
        state = model.encode(
            inputs[row], None if mask is None else mask[row], None if positions is None else positions[row]
        )
        tokens = self.spliced.to(inputs.device)[spliced]
        logprobs = model.token_logprobs(state, tokens[:, :-1])
        picked = logprobs.gather(-1, tokens[:, 1 : logprobs.shape[1] + 1, None])[..., 0]
        span = torch.zeros_like(picked, dtype=torch.bool)
        for k, index in enumerate(spliced.tolist()):
            start, stop = self.spans[index]
            span[k, start:stop] = True
        totals = (picked * span).sum(-1)
        result = totals.new_zeros(rows.shape[0], width)
        return result.index_put((row, self.columns.to(row.device)[spliced]), totals, accumulate=True)


def foil_of(vocab: Tokenizer, tokens: torch.Tensor, foil: torch.Tensor) -> Foil:
    """The :class:`Foil` of ``foil`` token rows for the sentences ``tokens`` ``(B, L)``: each row must have as many
    words as its sentence (one line otherwise)."""
    width = tokens.shape[1] - 1
    targets = tokens[:, 1:].clone()
    apart = torch.zeros_like(targets, dtype=torch.bool)
    words, spliced, owners, columns, spans = [], [], [], [], []
    for row, (fact_ids, foil_ids) in enumerate(zip(tokens.tolist(), foil.tolist(), strict=True)):
        fact_words, fact_owners = vocab.words_of(fact_ids)
        foil_words, foil_owners = vocab.words_of(foil_ids)
        if len(foil_words) != len(fact_words):
            raise UserError(
                f"the contrast sentence {' '.join(foil_words)!r} has {len(foil_words)} words and the sentence "
                f"explained {' '.join(fact_words)!r} has {len(fact_words)}; give a foil with one word per word"
            )
        for index, (fact_word, foil_word) in enumerate(zip(fact_words, foil_words, strict=True)):
            if fact_word == foil_word:
                continue
            fact_at = [k for k, owner in enumerate(fact_owners) if owner == index]
            foil_at = [k for k, owner in enumerate(foil_owners) if owner == index]
            if not 0 < fact_at[0] <= width:
                continue
            if len(fact_at) == 1 and fact_at == foil_at:
                targets[row, fact_at[0] - 1] = foil_ids[fact_at[0]]
                continue
            apart[row, [k - 1 for k in fact_at if 0 < k <= width]] = True
            foil_tokens = [foil_ids[k] for k in foil_at]
            spliced.append(fact_ids[: fact_at[0]] + foil_tokens)
            owners.append(row)
            columns.append(fact_at[0] - 1)
            spans.append((fact_at[0] - 1, fact_at[0] - 1 + len(foil_tokens)))
        words.append(foil_words)
    if not spliced:
        return Foil(targets, words)
    padded = vocab.pad_batch(spliced).to(tokens.device)
    return Foil(
        targets,
        words,
        scored_apart=apart,
        spliced=padded,
        owners=torch.tensor(owners, dtype=torch.long, device=tokens.device),
        columns=torch.tensor(columns, dtype=torch.long, device=tokens.device),
        spans=spans,
    )
