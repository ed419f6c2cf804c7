"""What a search found: the best trial (its held-out loss, the command that trains it again, its run in
DIR/best/), a Markdown table of every trial, and Optuna's optimisation-history and parameter-importance plots."""

import os
import shutil
from dataclasses import dataclass

from ..errors import MicrogptError

TABLE_FILE = 'TRIALS.md'
HISTORY_PLOT = 'history.png'
IMPORTANCE_PLOT = 'importance.png'
BEST_DIR = 'best'
COLUMNS = ('n_embd', 'n_layer', 'batch_size', 'epochs', 'lr', 'lr_schedule', 'warmup_fraction', 'weight_decay',
           'dropout')


@dataclass(frozen=True)
class Summary:
    best_value: float        # the best trial's held-out loss (nats per character)
    best_number: int
    command: str             # `microgpt train ...` that reproduces it
    best_dir: str            # its run, copied; None where it ran elsewhere
    files: tuple             # everything written
    counts: dict             # trial state -> how many


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return '' if value is None else str(value)


def trials_table(study):
    """Markdown: one row per trial, best first among the complete ones, then the rest by number."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    rest = sorted((t for t in trials if t.state != TrialState.COMPLETE), key=lambda t: t.number)
    lines = ['| trial | state | held-out loss | steps | seconds | ' + ' | '.join(COLUMNS) + ' |',
             '| ---: | --- | ---: | ---: | ---: | ' + ' | '.join('---' for _ in COLUMNS) + ' |']
    for t in complete + rest:
        last = max(t.intermediate_values) if t.intermediate_values else None
        loss = t.value if t.state == TrialState.COMPLETE else (t.intermediate_values[last] if last else None)
        state = t.state.name.lower() + (' (interrupted)' if t.user_attrs.get('interrupted') else '')
        cells = [str(t.number), state, _cell(loss), _cell(last), _cell(t.user_attrs.get('seconds'))]
        cells += [_cell(t.params.get(c)) for c in COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _plots(study, out_dir):
    """Optuna's own plots as PNG files; the importance plot needs two complete trials with different settings."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState
    written = []
    for name, plot, needed in ((HISTORY_PLOT, ovm.plot_optimization_history, 1),
                               (IMPORTANCE_PLOT, ovm.plot_param_importances, 2)):
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < needed:
            continue
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # Optuna marks its matplotlib plots experimental
            ax = plot(study)
        path = os.path.join(out_dir, name)
        ax.figure.set_size_inches(8, 5)
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=100)
        plt.close(ax.figure)
        written.append(path)
    return written


def summarize(study, out_dir):
    """Write the table, the plots and DIR/best/; returns a Summary. Refused if no trial is complete."""
    from optuna.trial import TrialState
    counts = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    table = os.path.join(out_dir, TABLE_FILE)
    with open(table, 'w', encoding='utf-8') as f:
        f.write(f"# Trials of study {study.study_name!r}\n\n" + trials_table(study))
    files = [table] + _plots(study, out_dir)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise MicrogptError(f"no trial of the study is complete yet ({shown_counts(counts) or 'none run'}); give a "
                            f"larger budget and run the command again to continue the study")
    best = study.best_trial
    best_dir = os.path.join(out_dir, BEST_DIR)
    # the trial's run in this folder (its recorded path is relative to where its search ran: from another folder it
    # named another search's run), if it ran here and not on another machine or into another --out
    from .search import TRIALS_DIR, holds_the_trial
    if holds_the_trial(os.path.join(out_dir, TRIALS_DIR), best):
        shutil.rmtree(best_dir, ignore_errors=True)
        shutil.copytree(os.path.join(out_dir, TRIALS_DIR, f"{best.number:04d}"), best_dir)
        files.append(best_dir)
    else:  # best/, if there, is an earlier best's
        best_dir = None
    return Summary(best.value, best.number, best.user_attrs['command'], best_dir, tuple(files), counts)


def shown_counts(counts):
    """'3 complete, 1 failed' of {state: count}."""
    return ', '.join(f"{n} {'failed' if state == 'fail' else state}" for state, n in sorted(counts.items()))
