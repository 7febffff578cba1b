"""Known answers in the prompt (`data.known_answers=k`): the policy reads answers to the nearest training requests.

A small policy trained on a few hundred dialogues writes their kind of text but not the answer to the request in
front of it, though the training answers hold on-topic text for unseen requests (benchmarks/retrieval_ceiling.py).
With known answers the prompt carries the answers (both of an HH pair) of the k training prompts whose last requests
are nearest to its own by MiniLM cosine, so the policy can copy, adapt or refuse them. A training prompt's nearest
is itself (unless `data.known_answers_self=false`: then, as for an evaluation prompt, its nearest others); an
evaluation prompt's answers are never in the store. The answers sit before the last human turn, so
the rewards, which read that turn alone (`last_request`), judge the response against the request as before.
"""

from __future__ import annotations

import torch

from meal_pl.rewards.relevance import last_request

HEADER = "Known answers to similar requests:"


def insert_known_answers(prompt: str, answers: list[str], words: int) -> str:
    """The prompt with a numbered list of `answers` (each cut to its first `words` words) before its last human turn."""
    head, sep, turn = prompt.rpartition("Human:")
    if not sep:
        raise ValueError(f"data.known_answers needs HH-format prompts ('\\n\\nHuman: ...'); got {prompt[:60]!r}")
    listed = "\n".join(f"{i}. {' '.join(a.split()[:words])}" for i, a in enumerate(answers, 1))
    lead = head[len(head.rstrip()):] or "\n\n"  # the turn's own leading blank line stays with it
    return f"{head.rstrip()}\n\n{HEADER}\n{listed}{lead}{sep}{turn}"


def nearest_store_entries(queries: torch.Tensor, store: torch.Tensor, k: int) -> list[list[int]]:
    """Each query's k nearest store rows by cosine (unit-norm rows), nearest first."""
    return (queries @ store.T).topk(min(k, store.shape[0]), dim=1).indices.tolist()


def with_known_answers(prompts: list[str], store: list[str], answers: dict[str, list[str]], k: int, words: int,
                       encoder=None, include_self: bool = True) -> dict[str, str]:
    """{prompt: prompt with the answers of its k nearest `store` prompts}; `answers` maps store prompts to answers.

    include_self=False: a prompt that is in the store reads its k nearest *other* store prompts' answers, so training
    prompts see what evaluation prompts see (neighbours' answers, never their own)."""
    if encoder is None:  # the one MiniLM the offline rewards also read
        from meal_pl.rewards.encoder import shared_encoder

        encoder = shared_encoder()
    keys = encoder.embed([last_request(p) for p in store])
    near = nearest_store_entries(encoder.embed([last_request(p) for p in prompts]), keys, k + (not include_self))
    if not include_self:
        near = [[j for j in row if store[j] != p][:k] for p, row in zip(prompts, near, strict=True)]
    return {p: insert_known_answers(p, [a for j in row for a in answers[store[j]]], words) for p, row in zip(prompts, near, strict=True)}
