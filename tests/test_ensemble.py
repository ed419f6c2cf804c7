"""Ensembles average their members' next-token probabilities: one member is the model itself, two identical
members are that model again, and by Jensen's inequality an ensemble never scores worse than its members' mean."""

import math
import random

import pytest
from helpers import assert_one_line_error, run_cli_in_process, write_names

from microgpt.config import ModelConfig, TrainConfig
from microgpt.engines import make_engine
from microgpt.ensemble import EnsembleDecoder, ensemble_loss
from microgpt.sampling import generate
from microgpt.train.loop import evaluate, train

DOCS = [[26, 4, 12, 12, 0, 26], [26, 0, 21, 0, 26], [26, 11, 8, 0, 12, 26], [26, 2, 7, 11, 14, 4, 26]] * 3


def trained(seed, steps=30):
    cfg = ModelConfig(vocab_size=27)
    engine = make_engine('numpy', cfg, random.Random(seed))
    for _ in train(engine, DOCS, TrainConfig(steps=steps, seed=seed)):
        pass
    return engine


def test_one_member_scores_as_the_engine_does():
    engine = trained(1)
    got = ensemble_loss(EnsembleDecoder([engine.decoder()]), DOCS, engine.cfg.block_size)
    want = evaluate(engine, DOCS)
    assert got == pytest.approx(want, rel=1e-12), (got, want)


def test_identical_members_change_nothing():
    a, b = trained(1), trained(1)
    single = ensemble_loss(EnsembleDecoder([a.decoder()]), DOCS, 16)
    double = ensemble_loss(EnsembleDecoder([a.decoder(), b.decoder()]), DOCS, 16)
    assert double == pytest.approx(single, rel=1e-12), (double, single)
    names = [generate(EnsembleDecoder([a.decoder(), b.decoder()]), 26, 16, random.Random(5), 0.5) for _ in range(5)]
    alone = [generate(EnsembleDecoder([a.decoder()]), 26, 16, random.Random(5), 0.5) for _ in range(5)]
    assert names == alone, (names, alone)


def test_an_ensemble_is_no_worse_than_its_members_mean():
    members = [trained(seed) for seed in (1, 2, 3)]
    losses = [evaluate(m, DOCS) for m in members]
    together = ensemble_loss(EnsembleDecoder([m.decoder() for m in members]), DOCS, 16)
    assert together <= sum(losses) / len(losses) + 1e-12, (together, losses)
    assert math.isfinite(together)


class Sure:
    """A decoder as sure as a model can be: the first token, 2,000 nats ahead of the others, whose probabilities
    are 0.0 in floating point."""

    def reset(self):
        pass

    def step(self, token_id, pos_id):
        return [0.0, -2000.0, -2000.0]


def test_a_token_of_probability_zero_in_floating_point_costs_its_loss_not_a_crash():
    """eval of an ensemble took log(softmax) of its log-mean probabilities: math.log(0.0), a ValueError, where
    the member alone scored 2,000 nats."""
    for members in ([Sure()], [Sure(), Sure()]):
        assert ensemble_loss(EnsembleDecoder(members), [[0, 1, 0]], 16) == pytest.approx(1000.0, rel=1e-12)
    logits = EnsembleDecoder([Sure(), Sure()]).step(0, 0)
    assert logits[0] == pytest.approx(0.0, abs=1e-12) and logits[1] == pytest.approx(-2000.0, rel=1e-12), logits


def test_an_empty_ensemble_and_nothing_to_predict_are_errors():
    with pytest.raises(ValueError, match='at least one model'):
        EnsembleDecoder([])
    with pytest.raises(ValueError, match='no token to predict'):
        ensemble_loss(EnsembleDecoder([trained(1, steps=1).decoder()]), [[26]], 16)


def test_eval_and_sample_take_several_checkpoints(tmp_path):
    data = write_names(tmp_path / 'names.txt')
    runs = []
    for seed in (1, 2):
        out = tmp_path / f'run{seed}'
        code, _, err = run_cli_in_process('train', '--data', str(data), '--steps', '40', '--eval-every', '20',
                                          '--seed', str(seed), '--out', str(out), '--num-samples', '0')
        assert code == 0, err
        runs.append(str(out / 'model.safetensors'))
    code, out, err = run_cli_in_process('eval', '--checkpoint', *runs, '--data', str(data))
    assert code == 0, err
    losses = [float(line.split()[1]) for line in out.splitlines()]
    assert len(losses) == 3 and 'ensemble of 2' in out.splitlines()[2], out
    # each after its own flag, the same ensemble (it was the last checkpoint alone, silently)
    assert run_cli_in_process('eval', '--checkpoint', runs[0], '--checkpoint', runs[1], '--data', str(data)) == \
        (code, out, err)
    assert losses[2] <= (losses[0] + losses[1]) / 2 + 1e-4, losses   # Jensen, up to the printed rounding
    code, out, err = run_cli_in_process('sample', '--checkpoint', *runs, '--num-samples', '5', '--data', str(data))
    assert code == 0, err
    assert len([line for line in out.splitlines() if line.startswith('sample')]) == 5, out
    other = tmp_path / 'other.txt'
    other.write_text('xyz\nzyx\nqq\n' * 5)
    code, _, err = run_cli_in_process('train', '--data', str(other), '--steps', '5', '--out', str(tmp_path / 'o'),
                                      '--num-samples', '0')
    assert code == 0, err
    code, out, err = run_cli_in_process('eval', '--checkpoint', runs[0], str(tmp_path / 'o' / 'model.safetensors'),
                                        '--data', str(data))
    assert_one_line_error(code, out, err, 'vocabulary differs')
    # the same characters, BOS first: it said the vocabularies differ, which the same data cannot explain
    code, _, err = run_cli_in_process('train', '--data', str(data), '--steps', '5', '--preset', 'esp32', '--out',
                                      str(tmp_path / 'first'), '--num-samples', '0')
    assert code == 0, err
    code, out, err = run_cli_in_process('eval', '--checkpoint', runs[0], str(tmp_path / 'first' / 'model.safetensors'),
                                        '--data', str(data))
    assert_one_line_error(code, out, err, "its BOS token is its vocabulary's first (the esp32 preset puts it first), ",
                          "'s the last; an ensemble needs models of one token order")


def test_an_ensemble_of_two_context_lengths_is_refused(tmp_path):
    """The ensemble held the shorter context: every sample was cut to 4 characters, and its loss, over the first 4
    positions only, was worse than its members' mean, which cannot be."""
    data = write_names(tmp_path / 'names.txt')
    runs = []
    for block in (16, 4):
        out = tmp_path / f'block{block}'
        code, _, err = run_cli_in_process('train', '--data', str(data), '--steps', '5', '--block-size', str(block),
                                          '--out', str(out), '--num-samples', '0')
        assert code == 0, err
        runs.append(str(out / 'model.safetensors'))
    for command in (['eval', '--data', str(data)], ['sample']):
        code, out, err = run_cli_in_process(*command, '--checkpoint', *runs)
        assert_one_line_error(code, out, err, f"{runs[1]}: its context holds 4 tokens (--block-size), {runs[0]}'s 16; "
                                              f"an ensemble needs models of one context length")
