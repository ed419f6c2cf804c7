"""The compiled shuffle of a big data file's documents: random.shuffle's permutation, and its random.Random left where
random.shuffle leaves it, at every size and across the raw outputs' blocks."""

import random
from array import array

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from microgpt import data, permutation
from microgpt.corpus import load_corpus
from microgpt.documents import Documents


def python_shuffle(n, rng):
    positions = array('q', range(n))
    rng.shuffle(positions)
    return list(positions)


def after_some_draws(seed, draws='random'):
    """A random.Random just seeded (its twister's index at 624), or part-way through its stream; after gauss() it
    holds the second normal of the pair (gauss_next), which the shuffle must leave as it is."""
    rng = random.Random(seed)
    if draws == 'random':
        rng.random()
    elif draws == 'gauss':
        rng.gauss(0, 1)
    elif draws == 'bits':
        rng.getrandbits(70)
    return rng


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**32), block=st.sampled_from([1, 2, 7, 64, 2**20]),
       draws=st.sampled_from(['none', 'random', 'gauss', 'bits']))
def test_the_compiled_shuffle_is_random_shuffles_and_leaves_the_stream_where_it_does(n, seed, block, draws):
    """Blocks of 1 or 2 raw outputs end inside nearly every position's draws (rejections included): each must
    start again in the next block with the twister exactly where its draws began."""
    expected_rng, rng = after_some_draws(seed, draws), after_some_draws(seed, draws)
    expected = python_shuffle(n, expected_rng)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(permutation, 'BLOCK', block)
        got = permutation.compiled_shuffle(n, rng)
    assert got.dtype == np.int64 and got.tolist() == expected
    assert rng.getstate() == expected_rng.getstate()
    assert [rng.gauss(0, 1) for _ in range(3)] == [expected_rng.gauss(0, 1) for _ in range(3)]  # the weights' draws


@pytest.mark.slow(seconds=4)
@pytest.mark.parametrize('n', [2**20 + 1, 2_500_000])  # past one block of raw outputs; past COMPILED_FROM
def test_the_compiled_shuffle_of_millions(n):
    expected_rng, rng = random.Random(42), random.Random(42)
    expected = np.frombuffer(array('q', python_shuffle(n, expected_rng)), np.int64)
    assert np.array_equal(permutation.shuffled_positions(n, rng), expected)
    assert rng.getstate() == expected_rng.getstate()


def test_documents_shuffle_through_it_as_a_list_of_strings_through_random_shuffle(names_path, monkeypatch):
    """With the compiled shuffle taking every size, the token array's documents come in data.shuffled's order of
    the strings, and the stream continues as it does after them."""
    monkeypatch.setattr(permutation, 'COMPILED_FROM', 0)
    strings_rng, documents_rng = random.Random(42), random.Random(42)
    strings = data.shuffled(data.load_documents(names_path), strings_rng)
    documents = Documents(load_corpus(names_path)).shuffled(documents_rng)
    assert list(documents.texts()) == strings
    assert documents_rng.getstate() == strings_rng.getstate()
