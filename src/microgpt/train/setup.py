"""The run setup that `train`, the study and the benchmark share: what a run reads and writes (RunConfig),
and `prepare_run`, which reads the data, holds out a split, shuffles, builds the vocabulary, the model
config and the engine in microgpt's random order.
"""

import random
from dataclasses import dataclass

from ..config import ModelConfig, SampleConfig, SettingError, TrainConfig, check_settings, setting
from ..data import VAL_SPLITS, Vocabulary, bundled_dataset_path, holdout_split, load_documents, shuffled
from ..engines import DEFAULT_ENGINE, DEVICES, DTYPES, ENGINES, make_engine, torchrun_rank
from ..errors import MicrogptError, OwnDataError
from ..fetch import is_url, fetch
from ..memory import check_memory
from ..presets import DEFAULT_PRESET


@dataclass(frozen=True)
class RunConfig:
    """What a run reads and writes, beside the model and its optimisation."""
    data: str = setting(None, 'UTF-8 text file, one document per line, or an http(s) URL (downloaded once into '
                              'the cache folder, then reused)', metavar='FILE',
                        shown_default='the bundled US baby names list')
    engine: str = setting(DEFAULT_ENGINE, 'compute engine: numpy (hand-derived gradients), fused (compiled with '
                                          'numba, fastest on a CPU), reference (pure-Python scalar autograd, microgpt '
                                          'itself), torch (PyTorch: GPUs, and many processes with torchrun)',
                          choices=ENGINES)
    dtype: str = setting('float64', 'floating-point type; bfloat16 is autocast, in the torch engine on a CUDA GPU',
                         choices=DTYPES)
    device: str = setting('auto', "where the torch engine computes; auto: cuda, else mps, else cpu",
                          choices=DEVICES)
    eval_every: int = setting(0, 'hold out a validation split and print its loss every N steps and at the end; '
                                 '0 = off, training on every document as microgpt does', at_least=0, metavar='N')
    val_fraction: float = setting(None, 'fraction of distinct documents held out (with --eval-every)',
                                  shown_default='like makemore, min(1000 documents, 10%)')
    val_split: str = setting('name', "hold out distinct names (a name is never on both sides), random lines as "
                                     "makemore does, or makemore's own test set (its seed 3407); line and makemore "
                                     "are for comparing with makemore's figures (with --eval-every)",
                             choices=VAL_SPLITS)
    out: str = setting(None, 'write DIR/model.safetensors (best validation loss, or last step), '
                             'DIR/resume.safetensors (latest state, for --resume) and DIR/metrics.jsonl',
                       metavar='DIR', shown_default='nothing is written')
    resume: bool = setting(False, 'continue the run saved in --out DIR; a larger --steps trains a finished run on')
    overwrite: bool = setting(False, 'replace the run already saved in --out DIR')
    save_every: int = setting(0, 'also save the resume state every N steps; 0 = only at evaluations, at the end '
                                 'and on Ctrl-C', at_least=0, metavar='N')
    plot: bool = setting(False, 'write DIR/loss.png of train and validation loss (needs --out)')

    def __post_init__(self):
        check_settings(self)
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise SettingError(lambda name: f"{name('val_fraction')} must be between 0 and 1, got {self.val_fraction}")
        self.check_flags_given(())
        if self.val_split == 'makemore' and self.val_fraction is not None:
            raise SettingError(lambda name: f"{name('val_split')} makemore holds out makemore's own test set; "
                                            f"leave out {name('val_fraction')}")
        if self.out == '':
            raise SettingError(lambda name: f"{name('out')} needs a folder name")
        if self.out is None:
            for key, what in (('resume', 'it continues the run saved there'), ('overwrite', 'it replaces the run there'),
                              ('plot', 'it writes DIR/loss.png'), ('save_every', 'it saves there')):
                if getattr(self, key):
                    raise SettingError(lambda name, key=key, what=what: f"{name(key)} needs {name('out')} DIR ({what})")
        if self.resume and self.overwrite:
            raise SettingError(lambda name: f"{name('resume')} continues the run in {name('out')} and "
                                            f"{name('overwrite')} replaces it: give one of them")
        if self.engine == 'reference' and self.dtype != 'float64':
            raise SettingError(lambda name: f"the reference engine computes in Python floats (float64) only; "
                                            f"use {name('engine')} numpy for {name('dtype')} {self.dtype}")

    def check_flags_given(self, given):
        """Refuse the settings that would change nothing: a held-out split's shape without --eval-every, a device
        for an engine that computes on the CPU. `given`, the flags typed, catches a default typed in (--device auto,
        --val-split name), which changes nothing either."""
        if not self.eval_every:  # a split that nothing evaluates on would silently change nothing
            for key, shaped in (('val_fraction', self.val_fraction is not None),
                                ('val_split', self.val_split != 'name')):
                if shaped or key in given:
                    raise SettingError(lambda name, key=key: f"{name(key)} shapes the held-out split, which only "
                                                              f"{name('eval_every')} N makes; add {name('eval_every')}")
        if (self.device != 'auto' or 'device' in given) and self.engine != 'torch':
            raise SettingError(lambda name: f"{name('device')} {self.device} is the torch engine's; the {self.engine} "
                                            f"engine computes on the CPU: add {name('engine')} torch, or drop "
                                            f"{name('device')}")

    @property
    def data_path(self):
        return bundled_dataset_path() if self.data is None else self.data


@dataclass(frozen=True)
class RunSettings:
    """Everything a training run is given."""
    run: RunConfig
    model: dict              # ModelConfig fields but vocab_size, which the data decides
    train: TrainConfig
    preset: str = DEFAULT_PRESET
    sample: SampleConfig = None  # the names sampled at the end (recorded, so that --resume samples them too)

    def __post_init__(self):
        ModelConfig(vocab_size=1, **self.model)  # flag errors before any file is read
        self.train.check_engine(self.run.engine)
        if self.run.save_every >= self.train.steps:  # the run always saves at its end
            raise SettingError(lambda name: f"{name('save_every')} {self.run.save_every} saves nothing the end of "
                                            f"the run does not ({name('steps')} {self.train.steps}); give a smaller N "
                                            f"or leave it out")


# ---- the run setup: the same for `train`, the study and the benchmark

@dataclass(frozen=True)
class Holdout:
    """How to hold out validation documents: data.holdout_split's arguments."""
    fraction: float = None   # None: makemore's min(1000, 10%)
    by: str = 'name'
    seed: int = 42


@dataclass
class Run:
    docs: list               # training documents, shuffled: strings (reference engine) or documents.Documents
    val_docs: list           # held-out documents, the same kind (none without a Holdout)
    vocab: Vocabulary
    cfg: ModelConfig
    engine: object           # an engines.Engine, or None when none was asked for
    rng: random.Random       # the one stream, after the shuffle and the initialisation: sampling continues it
    notice: str = None       # one line for the user (the token cache could not be written), or None

    @property
    def train_tokens(self):
        return self._tokens(self.docs)

    @property
    def val_tokens(self):
        return self._tokens(self.val_docs)

    def _tokens(self, docs):
        """[BOS] + ids + [BOS] of each document: Documents already are that sequence."""
        return [self.vocab.document_tokens(d) for d in docs] if isinstance(docs, list) else docs


def _read_data(data_path, engine, bos_first, progress):
    """(documents, no held-out documents, the longest one's length or None, the token cache's notice or None)."""
    if is_url(data_path):
        data_path = fetch(data_path, progress=progress)
    if engine == 'reference':
        return load_documents(data_path), [], None, None
    from ..corpus import load_corpus
    from ..documents import Documents
    corpus = load_corpus(data_path, progress=progress)
    docs = Documents(corpus, bos_first=bos_first)
    return docs, docs.take([]), corpus.longest, corpus.notice


def prepare_run(data_path, model, tcfg, engine=DEFAULT_ENGINE, dtype='float64', holdout=None, device='auto',
                progress=None):
    """microgpt's setup in its random order: read the documents, hold out `holdout` (on its own stream), shuffle
    the rest with Random(tcfg.seed), build the vocabulary of both, the model config (`model`: its fields but
    vocab_size), and the engine, initialised from the same stream. `engine` None builds none (the PyTorch
    baseline initialises its own from `rng`).

    The documents are a token array (corpus.py: cached, memory-mapped, any size) read through
    documents.Documents; the reference engine, which is microgpt itself and never loads NumPy, reads them as
    strings. Both give the same documents in the same order. `progress(bytes, total or None)` follows a
    download or a first tokenisation."""
    rng = random.Random(tcfg.seed)
    data_parallel = engine == 'torch' and torchrun_rank() is not None
    if data_parallel:  # join torchrun's process group before reading: a process that cannot read stops the others now
        from ..engines.torch.devices import placement
        placement(device, dtype)
    bos_first = model.get('bos') == 'first'
    try:
        docs, val_docs, longest, notice = _read_data(data_path, engine, bos_first, progress)
    except MicrogptError as e:
        if data_parallel:
            raise OwnDataError(str(e)) from None
        raise
    if holdout is not None:
        docs, val_docs = holdout_split(docs, holdout.fraction, holdout.seed, holdout.by)
    docs = shuffled(docs, rng)
    if tcfg.batch_size > len(docs):
        raise MicrogptError(f"--batch-size {tcfg.batch_size} is larger than the {len(docs)} training documents; "
                            f"give a smaller batch or more data")
    if isinstance(docs, list):
        vocab = Vocabulary.from_documents(docs + val_docs, bos_first=bos_first)
        longest = max(map(len, docs + val_docs))
    else:
        vocab = docs.vocabulary()  # the characters of every document, train and held out
    if data_parallel:
        from ..engines.torch.engine import check_same_data
        first = [docs.text(i) for i in range(min(3, len(docs)))]
        check_same_data((len(docs), int(docs.lengths().sum()), vocab.chars, first))
    cfg = ModelConfig(vocab_size=vocab.size, **model)
    check_memory(cfg, tcfg.batch_size, longest, dtype, engine=engine or 'numpy')
    engine = make_engine(engine, cfg, rng, dtype, device) if engine is not None else None
    return Run(docs, val_docs, vocab, cfg, engine, rng, notice)
