"""--val-split makemore: makemore's own test set, reproduced without torch and checked against torch itself."""

import os

import pytest

from microgpt.data import holdout_split, load_documents
from microgpt.errors import MicrogptError
from microgpt.makemore_split import MAKEMORE_SEED, torch_randperm

from helpers import NAMES, assert_one_line_error, run_cli_in_process as run, write_names


@pytest.mark.parametrize('seed', [MAKEMORE_SEED, 0, 123456789])
@pytest.mark.parametrize('n', [1, 2, 3, 10, 627, 1000, 32033])
def test_torch_randperm_is_torchs(require_torch, n, seed):
    torch = require_torch
    torch.manual_seed(seed)
    assert torch_randperm(n, seed) == torch.randperm(n).tolist()


def test_makemore_split_is_makemores_test_set(require_torch, names_path):
    """What makemore's create_datasets builds from names.txt: seed 3407, the permutation's last 1000 lines."""
    torch = require_torch
    words = load_documents(names_path)
    torch.manual_seed(3407)
    rp = torch.randperm(len(words)).tolist()
    train, test = holdout_split(words, by='makemore')
    assert test == [words[i] for i in rp[-1000:]] and train == [words[i] for i in rp[:-1000]]
    assert holdout_split(words, seed=7, by='makemore') == (train, test), "makemore's seed is fixed, not --seed"


def test_makemore_split_of_a_small_file_holds_out_a_tenth():
    docs = [f'name{i}' for i in range(57)]
    train, test = holdout_split(docs, by='makemore')
    assert len(test) == 5 and sorted(train + test) == sorted(docs)
    with pytest.raises(MicrogptError, match='9 lines give none'):
        holdout_split(docs[:9], by='makemore')
    with pytest.raises(MicrogptError, match='leave out --val-fraction'):
        holdout_split(docs, 0.2, by='makemore')


def test_train_and_eval_on_the_makemore_split(tmp_path):
    small_data, out = write_names(tmp_path / 'names.txt'), str(tmp_path / 'run')
    code, stdout, err = run('train', '--data', small_data, '--steps', '30', '--eval-every', '10', '--val-split',
                            'makemore', '--out', out, '--num-samples', '2')
    assert code == 0, err
    best_val = [line for line in stdout.splitlines() if 'val loss' in line][-1].split('best ')[1]
    code, stdout, err = run('eval', '--checkpoint', os.path.join(out, 'model.safetensors'))
    assert code == 0 and stdout.startswith(f'loss {best_val} ') and f'on {len(NAMES) * 2 // 10} documents' in stdout, \
        (best_val, stdout, err)
    assert_one_line_error(*run('train', '--data', small_data, '--eval-every', '10', '--val-split', 'makemore',
                      '--val-fraction', '0.2'), 'leave out --val-fraction')
