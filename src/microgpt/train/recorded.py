"""What a run's checkpoints record of it, read back: the settings that resume it (`resume_settings`), the data it
trained on and the split it held out (`recorded_data`, `recorded_split`, `recorded_documents`), and its data path
as metadata holds it (`recorded_path`, `path_of_recorded`). `microgpt train --resume`, `eval`, `sample` and the
exports read them.
"""

import os
import re
from dataclasses import asdict, fields

from ..config import SampleConfig, SettingError, check_sampling_flags, shell_flag
from ..data import file_identity, holdout_split, load_documents
from ..errors import MicrogptError
from ..fetch import is_url, local_path
from ..presets import PRESETS

BEST_CHECKPOINT = 'model.safetensors'
RESUME_CHECKPOINT = 'resume.safetensors'
SAMPLING = tuple(f.name for f in fields(SampleConfig))  # settings of the names printed at the end


def resume_settings(out, given, preset=None):
    """The settings that continue the run saved in `out`: those its checkpoint records (model, training, data,
    held-out split, engine, dtype, sampling and --save-every), the saved preset's for the rest (the sampling of
    checkpoints that record none), and `given` (the flags on the command line) on top. A given setting that
    differs from the recorded one is an error, but a larger steps, which trains on, another engine (checkpoints
    are interchangeable), --save-every and the sampling flags, which change only when it saves and the names
    printed at the end."""
    from .checkpoint import HINT, load_checkpoint
    check_sampling_flags(given)  # as presets.resolve does for a fresh run: a flag that changes nothing is refused
    path = os.path.join(out, RESUME_CHECKPOINT)
    if os.path.isfile(out):
        raise MicrogptError(f"--out {out} is a file: --resume takes the run's folder, the one holding "
                            f"{RESUME_CHECKPOINT}")
    if not os.path.exists(path):
        start = ("replace it with --overwrite instead" if os.path.exists(os.path.join(out, BEST_CHECKPOINT))
                 else "drop --resume to start fresh")
        raise MicrogptError(f"{path}: nothing to resume (no resume state there); {start}")
    try:
        ckpt = load_checkpoint(path)
    except MicrogptError as e:  # its advice is sample's and eval's (give a model.safetensors): not one for --resume
        if f"; {HINT}" not in str(e):  # a checkpoint of a newer microgpt: its own advice (upgrade) holds
            raise
        reason = str(e).split(f"; {HINT}")[0]
        raise MicrogptError(f"{reason}; --resume needs this file whole: put back a copy of it, or start the run "
                            f"again with --overwrite") from None
    meta = ckpt.meta
    recorded = {**{k: v for k, v in asdict(ckpt.model_cfg).items() if k != 'vocab_size'}, **asdict(ckpt.train_cfg),
                'eval_every': meta.get('eval_every', 0), 'val_fraction': meta.get('val_fraction'),
                'val_split': meta.get('val_split', 'name'), 'save_every': meta.get('save_every', 0),
                'dtype': meta.get('compute_dtype', meta.get('dtype', 'float64'))}
    for key, meta_key in (('data', 'data_path'), ('engine', 'engine'), ('preset', 'preset')):
        if meta.get(meta_key) is not None:  # older checkpoints may lack them
            recorded[key] = meta[meta_key]
    sampling = meta.get('sampling')  # before it was recorded: the preset's
    if sampling is not None:
        try:
            SampleConfig(**sampling)
        except (SettingError, TypeError):
            raise MicrogptError(f"{path}: damaged checkpoint metadata: sampling {sampling!r}") from None
        recorded.update(sampling)
    now = {**given, **({'data': recorded_path(given['data'])} if 'data' in given else {}),
           **({'preset': preset} if preset is not None else {})}
    if 'data' in now and now['data'] != recorded.get('data') and _holds_the_runs_data(given['data'], meta):
        recorded['data'] = now['data']  # the same data moved, or reached through a link: it continues the run
    differences = [f"{k}: checkpoint {_shown(k, recorded[k])}, now {_shown(k, v)}" for k, v in now.items()
                   if k in recorded and k not in ('steps', 'engine', 'save_every', *SAMPLING) and v != recorded[k]]
    if differences:
        if 'data' in now and not os.path.exists(path_of_recorded(recorded.get('data', ''))):
            data = given['data']
            given_data = ('is a web address, not the file it trained on' if is_url(data) else
                          'holds other data (another length, or other first or last 64 KiB)' if os.path.isfile(data)
                          else 'is not a file' if os.path.exists(data) else 'is not there')
            advice = f"the run's data file is no longer there, and --data {given_data}: give the file it trained on"
        else:
            advice = f"resume with --resume {shell_flag('--out', out)} alone to continue as saved"
        raise MicrogptError(f"--resume with a different configuration ({'; '.join(differences)}); {advice}, "
                            f"or train into a new --out folder")
    if given.get('steps', ckpt.step) < ckpt.step:
        raise MicrogptError(f"{path} is at step {ckpt.step}, past --steps {given['steps']}; give --steps "
                            f"{ckpt.step} or more to continue it")
    saved_preset = recorded.pop('preset', None)
    if 'data' in recorded:
        recorded['data'] = path_of_recorded(recorded['data'])
        if 'data' not in given and not is_url(recorded['data']) and not os.path.exists(recorded['data']):
            raise MicrogptError(f"the run's data file {recorded['data']} is no longer there; give its new place with "
                                f"--data (--resume checks that it holds the same data)")
    settings = {**PRESETS.get(saved_preset, {}), **recorded, **given}
    if 'save_every' not in given and settings['save_every'] >= settings['steps']:  # --steps fewer than the run's
        settings['save_every'] = 0  # the end saves: a recorded interval past it is not the user's to leave out
    check_sampling_flags({**given, 'num_samples': settings.get('num_samples')})  # a recorded 0 samples nothing
    return settings, saved_preset


def _shown(key, value):
    """A setting's value in a message: None, which a run records for a default that depends on the data (the
    held-out fraction's), as that default."""
    if value is not None:
        return repr(value)
    from .setup import RunConfig
    field = RunConfig.__dataclass_fields__.get(key)
    shown_default = field.metadata.get('shown_default') if field else None
    return f"the default ({shown_default})" if shown_default else "the default"


def _holds_the_runs_data(path, meta):
    """Whether the local file `path` is the data of the checkpoint whose metadata is `meta`, wherever it now lies:
    the same length and first and last 64 KiB as the run's (the check a resume makes of a file at its recorded
    path). False for a URL, a pipe, or a checkpoint that records no identity."""
    saved = meta.get('data_identity')
    return saved is not None and not is_url(path) and file_identity(path) == saved


def recorded_data(ckpt, on_stream=None, progress=None):
    """The local file of the data a checkpoint's run trained on: its recorded path, or its URL's download (fetched
    if not cached). A MicrogptError saying why, without advice (each caller has its own), when the run recorded none,
    when it is not there or not a file, or when it was edited since the run saved (its length or its first or last
    64 KiB differ from the checkpoint's data_identity): its held-out split would hold other documents.
    With `on_stream`, a pipe or a device the run read (it has no identity) is read again, as the run read it,
    once on_stream(notice) has said that nothing can check it; so is a file there now (`< FILE`), with its notice.
    `progress` follows a download (fetch's)."""
    recorded = ckpt.meta.get('data_path')
    if not recorded:
        raise MicrogptError("the checkpoint records no training data")
    path = local_path(path_of_recorded(recorded), progress)
    saved = ckpt.meta.get('data_identity')  # checkpoints before it was kept have none
    if not os.path.isfile(path):
        if on_stream is not None and saved is None and os.path.exists(path):
            on_stream(f"the training data {recorded!r} is a stream (a pipe or a device): it is read again now, and "
                      f"cannot be checked against the run's (the documents are the run's only if it gives the same "
                      f"lines)")
            return path
        what = 'is not a file' if os.path.exists(path) else 'is not there'
        raise MicrogptError(f"the training data {recorded!r} {what}")
    if saved is not None and file_identity(path) != saved:
        raise MicrogptError(f"the training data {recorded!r} changed since the run saved (its length or its first or "
                            f"last 64 KiB)")
    if saved is None and on_stream is not None:  # a file now (`< FILE`), a stream then: nothing to check it against
        on_stream(f"the training data {recorded!r} has no recorded identity (the run read a stream, or an older "
                  f"microgpt saved it): it is read again now, and cannot be checked against the run's (the documents "
                  f"are the run's only if it gives the same lines)")
    return path


def recorded_split(ckpt, docs):
    """(train, held out): the split the checkpoint's run made of `docs` (its data, read again)."""
    return holdout_split(docs, ckpt.meta.get('val_fraction'), ckpt.train_cfg.seed, ckpt.meta.get('val_split', 'name'))


def recorded_documents(ckpt, on_stream=None, notice=None, progress=None):
    """(trained on, held out) of the checkpoint's recorded data (recorded_data), as documents.Documents over its
    token cache in the model's token ids: no Python object per document. Held out is empty when the run held none
    out. `notice` is file_documents', `progress` follows a download and a first tokenising."""
    from ..documents import file_documents
    docs = file_documents(recorded_data(ckpt, on_stream, progress), ckpt.vocab, notice, progress)
    return recorded_split(ckpt, docs) if ckpt.meta.get('eval_every') else (docs, docs.take([]))


def trained_documents(ckpt, on_stream=None):
    """The documents the checkpoint's run trained on, as strings: its recorded data (recorded_data), less the
    held-out split when it held one out."""
    docs = load_documents(recorded_data(ckpt, on_stream))
    return recorded_split(ckpt, docs)[0] if ckpt.meta.get('eval_every') else docs


def recorded_path(path):
    """A data path as checkpoint metadata (UTF-8 JSON) holds it: a URL as given, a file as its absolute path in
    UTF-8, a byte that is not UTF-8 written \\xHH (path_of_recorded reads it back)."""
    if is_url(path):
        return path
    return os.fsencode(os.path.abspath(path)).decode('utf-8', 'backslashreplace')


def path_of_recorded(text):
    """The path that recorded_path wrote as `text` (backslashreplace writes only bytes 0x80 and above)."""
    if is_url(text):
        return text
    raw = re.sub(rb'\\x([89a-f][0-9a-f])', lambda m: bytes([int(m[1], 16)]), text.encode('utf-8'))
    return os.fsdecode(raw)
