"""The search space: the settings that matter for a small character model, with ranges that follow the data.

A trial's settings are Optuna suggestions; `trial_settings` turns them into the fields of ModelConfig and
TrainConfig. Training length is searched in epochs (passes over the training documents) and turned into
steps for the trial's batch size, so one space fits a list of 300 words and one of 300,000.
"""

import math

SPACE_VERSION = 1  # a study remembers the space it was made with; a changed space needs a new study

N_EMBD = (16, 32, 64, 96, 128)
BATCH_SIZES = (8, 16, 32, 64)


def suggest(trial, n_train_docs, max_steps):
    """Ask `trial` for one point of the space; returns (model fields, train fields)."""
    n_embd = trial.suggest_categorical('n_embd', N_EMBD)
    n_layer = trial.suggest_int('n_layer', 1, 4)
    batch_size = trial.suggest_categorical('batch_size', [b for b in BATCH_SIZES if b <= n_train_docs] or [1])
    epochs = trial.suggest_float('epochs', 2.0, 60.0, log=True)
    lr = trial.suggest_float('lr', 3e-4, 1e-2, log=True)
    lr_schedule = trial.suggest_categorical('lr_schedule', ('cosine', 'linear', 'constant'))
    weight_decay = trial.suggest_float('weight_decay', 0.0, 0.5, step=0.05)
    dropout = trial.suggest_float('dropout', 0.0, 0.3, step=0.05)
    steps = min(max_steps, max(50, math.ceil(epochs * n_train_docs / batch_size)))
    warmup_fraction = trial.suggest_float('warmup_fraction', 0.0, 0.05, step=0.01)
    model = {'n_embd': n_embd, 'n_layer': n_layer}  # 4 heads, init std 0.02: the base preset's (search.py)
    train = {'steps': steps, 'batch_size': batch_size, 'lr': lr, 'lr_schedule': lr_schedule,
             'warmup': int(warmup_fraction * steps), 'weight_decay': weight_decay, 'dropout': dropout}
    return model, train
