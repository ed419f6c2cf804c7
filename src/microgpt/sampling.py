"""Turning logits into tokens: temperature, top-k, top-p, and the draw from a `random.Random`.

Standard library only, shared by every engine, so that the same logits and the same random stream
give the same names whatever engine computed them. The arithmetic is microgpt's
`softmax([l / temperature for l in logits])` written on floats, operation for operation
(`l / t` is `l * t**-1` there, the sum runs left to right, `e / total` is `e * total**-1`).
"""

import math

from .config import SampleConfig
from .errors import MicrogptError


def token_probabilities(logits, temperature, top_k=0, top_p=1.0):
    """Probabilities (floats, in vocabulary order) for the next token; filtered entries are 0.0. The knobs are
    SampleConfig's, with its bounds (a SettingError names the one out of them)."""
    if not (1e-300 <= temperature < math.inf and type(top_k) is int and top_k >= 0 and 0 < top_p <= 1):
        SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p)  # the fast test's doubts, decided
    inverse_temperature = temperature ** -1
    scaled = [logit * inverse_temperature for logit in logits]
    max_val = max(scaled)
    exps = [math.exp(s + (-max_val)) for s in scaled]
    total = 0
    for e in exps:  # left to right; builtin sum() of floats is compensated on Python >= 3.12
        total = total + e
    if not 0 < total < math.inf:  # nan or inf: logits (or logit / temperature) beyond what a float holds
        raise MicrogptError(f"the model's next-token probabilities are not finite (largest scaled logit "
                            f"{max_val}): its weights are too large, as after a diverging run; train it again "
                            f"with a lower --lr or --grad-clip, or sample at a higher --temperature")
    inverse_total = total ** -1
    probs = [e * inverse_total for e in exps]
    if top_k or top_p < 1.0:
        probs = _filter(probs, top_k, top_p)
    return probs


def _filter(probs, top_k, top_p):
    """Keep the top_k most likely tokens, then the smallest set whose mass reaches top_p."""
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
    if top_k:
        ranked = ranked[:top_k]
    if top_p < 1.0:
        kept, mass = [], 0.0
        for i in ranked:
            kept.append(i)
            mass += probs[i]
            if mass >= top_p:
                break
        ranked = kept
    keep = set(ranked)
    return [p if i in keep else 0.0 for i, p in enumerate(probs)]


def draw(probs, rng):
    """One token id, drawn exactly as microgpt's `random.choices(range(V), weights=probs)[0]`."""
    return rng.choices(range(len(probs)), weights=probs)[0]


def generate(decoder, bos_id, block_size, rng, temperature, top_k=0, top_p=1.0, prompt_ids=()):
    """Token ids of one sample (prompt included, BOS excluded).

    `decoder.reset()` empties its KV cache; `decoder.step(token_id, pos_id)` returns the logits for the
    next position as floats. Generation starts from BOS, feeds the prompt, and stops at BOS or after
    block_size tokens, as microgpt's inference loop does. The prompt takes up to block_size - 1 of them.
    """
    SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    if len(prompt_ids) >= block_size:
        raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room in a block of {block_size}: give "
                         f"at most {block_size - 1}")
    decoder.reset()
    out = list(prompt_ids)
    token_id = bos_id
    for pos_id in range(block_size):
        logits = decoder.step(token_id, pos_id)
        if pos_id < len(prompt_ids):
            token_id = prompt_ids[pos_id]
            continue
        token_id = draw(token_probabilities(logits, temperature, top_k, top_p), rng)
        if token_id == bos_id:
            break
        out.append(token_id)
    return out
