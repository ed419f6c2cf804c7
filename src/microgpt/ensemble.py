"""Ensembles: several models over one vocabulary, whose next-token probabilities are averaged.

An ensemble is itself a decoder (engines.Decoder): its `step` returns the log of the mean of its members'
probabilities, so sampling.generate, temperature, top-k and top-p work on it unchanged (at temperature 1 it
samples from the mean distribution). `ensemble_loss` scores held-out documents with any decoder, one position
at a time, as the mean negative log-likelihood per predicted token: for a single model it equals the engine's
own loss, which the tests check. Standard library only.
"""

import math


def softmax(logits):
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = math.fsum(exps)
    return [e / total for e in exps]


class EnsembleDecoder:
    """The members' decoders, stepped together; logits are log(mean of their softmax probabilities)."""

    def __init__(self, decoders):
        if not decoders:
            raise ValueError("an ensemble needs at least one model")
        self.decoders = list(decoders)

    def reset(self):
        for d in self.decoders:
            d.reset()

    def step(self, token_id, pos_id):
        members = [softmax(d.step(token_id, pos_id)) for d in self.decoders]
        n = len(members)
        return [math.log(math.fsum(column) / n) if any(column) else -math.inf for column in zip(*members)]


def ensemble_loss(decoder, doc_tokens, block_size):
    """Mean negative log-likelihood per predicted token (nats per character) of `decoder` over the documents:
    each document predicts its tokens 1..n from 0..n-1, n = min(block_size, len - 1)."""
    total, count = 0.0, 0
    for tokens in doc_tokens:
        decoder.reset()
        for pos_id in range(min(block_size, len(tokens) - 1)):
            probs = softmax(decoder.step(tokens[pos_id], pos_id))
            total -= math.log(probs[tokens[pos_id + 1]])
            count += 1
    if not count:
        raise ValueError("no token to predict: every document needs at least 2 tokens")
    return total / count
