"""Ensembles: several models over one vocabulary, whose next-token probabilities are averaged.

An ensemble is itself a decoder (engines.Decoder): its `step` returns the log of the mean of its members'
probabilities, so sampling.generate, temperature, top-k and top-p work on it unchanged (at temperature 1 it
samples from the mean distribution). `ensemble_loss` scores held-out documents with any decoder, one position
at a time, as the mean negative log-likelihood per predicted token: for a single model it equals the engine's
own loss, which the tests check. Standard library only.
"""

import math


def log_softmax(logits):
    """log(softmax(logits)), finite where the probability underflows to 0 (a confident model's loss of 2,000 nats)."""
    top = max(logits)
    log_total = top + math.log(math.fsum(math.exp(x - top) for x in logits))
    return [x - log_total for x in logits]


def log_mean_exp(values):
    """log(mean(exp(values))), computed from the largest: -inf when every value is."""
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(math.fsum(math.exp(v - top) for v in values) / len(values))


class EnsembleDecoder:
    """The members' decoders, stepped together; logits are log(mean of their softmax probabilities), computed in
    log space."""

    def __init__(self, decoders):
        if not decoders:
            raise ValueError("an ensemble needs at least one model")
        self.decoders = list(decoders)

    def reset(self):
        for d in self.decoders:
            d.reset()

    def step(self, token_id, pos_id):
        members = [log_softmax(d.step(token_id, pos_id)) for d in self.decoders]
        return [log_mean_exp(column) for column in zip(*members)]


def ensemble_loss(decoder, doc_tokens, block_size):
    """Mean negative log-likelihood per predicted token (nats per character) of `decoder` over the documents:
    each document predicts its tokens 1..n from 0..n-1, n = min(block_size, len - 1)."""
    total, count = 0.0, 0
    for tokens in doc_tokens:
        decoder.reset()
        for pos_id in range(min(block_size, len(tokens) - 1)):
            total -= log_softmax(decoder.step(tokens[pos_id], pos_id))[tokens[pos_id + 1]]
            count += 1
    if not count:
        raise ValueError("no token to predict: every document needs at least 2 tokens")
    return total / count
