"""Model and training configuration, and the parameter layout every engine shares.

The layout (names, shapes, order) is microgpt's state dict: `wte`, `wpe`, `lm_head`, then per layer
`attn_wq`, `attn_wk`, `attn_wv`, `attn_wo`, `mlp_fc1`, `mlp_fc2`. Both engines, checkpoints and the C
export use these names, and parameters are drawn from one `random.Random` in exactly this order, so
every engine starts from the same weights as Karpathy's script for the same seed.
"""

import math
import random
import shlex
from dataclasses import asdict, dataclass, field, fields

from .errors import MicrogptError

NORM_PLACEMENTS = ('microgpt', 'esp32', 'none')
MLP_ACTIVATIONS = ('relu', 'relu2')
ATTENTION_KINDS = ('causal', 'self')
BOS_POSITIONS = ('last', 'first')
LR_SCHEDULES = ('linear', 'cosine', 'constant')
ZERO_INIT_CHOICES = ('attn_wo', 'mlp_fc2')
FLOAT32_TINY = 2.0 ** -126  # float32's smallest normal number, the least Adam eps
DROPOUT_LEVELS = 1 << 16  # dropout rates are multiples of 1 / 65536: a mask element is 16 random bits (dropout.py)


# ---- settings: config fields that carry their own help text, choices and bounds, so that the command line's
# flags, their validation and the README's defaults all come from the dataclasses below


def setting(default, help=None, *, choices=None, at_least=None, at_most=None, metavar=None, shown_default=None,
            flag=None):
    """A config field. With `help` it is also a command-line flag, `flag` or `--name-with-dashes` (cli.py builds
    the parser from these); `choices`, `at_least` and `at_most` are checked by check_settings wherever the config
    is made."""
    return field(default=default, metadata={'help': help, 'choices': choices, 'at_least': at_least,
                                            'at_most': at_most, 'metavar': metavar, 'shown_default': shown_default,
                                            'flag': flag})


def flag_name(f):
    """The command-line flag of a dataclass field that has one."""
    return f.metadata.get('flag') or '--' + f.name.replace('_', '-')


def flag_words(flag, value):
    """The command-line words that give `flag` the value `value` (a string): `--flag=VALUE` where the value begins
    with a dash, which argparse would take for another flag (`--data -n.txt`: "expected one argument")."""
    return [f'{flag}={value}'] if value.startswith('-') else [flag, value]


def shell_flag(flag, value):
    """flag_words as they are typed in a shell, quoted where they need it."""
    return shlex.join(flag_words(flag, value))


class SettingError(MicrogptError, ValueError):
    """An invalid config value. `words(name)` says what is wrong with each setting named by `name(field)`: the
    command line names its flags, a checkpoint its fields (str() names the fields)."""

    def __init__(self, words):
        super().__init__(words(str))
        self.words = words


KINDS = {int: 'an integer', float: 'a number', bool: 'true or false', str: 'a string', tuple: 'a list'}


def is_kind(value, kind):
    """Whether `value` is of the field type `kind`. A bool is an int to Python, never to a config; a float
    setting takes an int."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float) if kind is float else kind)


def check_settings(config):
    """What every config checks, from its fields' types and metadata: each value has its field's type (or is
    None where that is the default), floats are finite, choices are honoured, bounds are met. A config read
    from a checkpoint gets the same checks as one from the command line. Each dataclass adds the checks that
    relate two fields."""
    for f in fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if not (value is None and f.default is None or is_kind(value, f.type)):
            raise SettingError(lambda name, f=f, value=value: f"{name(f.name)} must be {KINDS[f.type]}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(lambda name, f=f, value=value: f"{name(f.name)} must be a finite number, got {value}")
        if meta.get('choices') and value not in meta['choices']:
            raise SettingError(lambda name, f=f, value=value, allowed=meta['choices']:
                               f"{name(f.name)} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        if meta.get('at_least') is not None and value is not None and value < meta['at_least']:
            raise SettingError(lambda name, f=f, value=value, bound=meta['at_least']:
                               f"{name(f.name)} must be at least {bound}, got {value}")
        if meta.get('at_most') is not None and value is not None and value > meta['at_most']:
            raise SettingError(lambda name, f=f, value=value, bound=meta['at_most']:
                               f"{name(f.name)} must be at most {bound}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. The defaults are Karpathy's microgpt; the switches without a flag exist for the presets and
    the study."""
    vocab_size: int = field(metadata={'at_least': 1})  # the data decides it
    n_embd: int = setting(16, 'embedding width, a multiple of --n-head', at_least=1)
    n_head: int = setting(4, 'attention heads per layer', at_least=1)
    n_layer: int = setting(1, 'transformer layers', at_least=1)
    block_size: int = setting(16, 'context length in tokens; longer documents are truncated', at_least=1)
    init_std: float = setting(0.08, at_least=0)
    # microgpt: after embedding + before attn + before mlp; esp32: before attn only
    norm: str = setting('microgpt', choices=NORM_PLACEMENTS)
    mlp_activation: str = setting('relu', choices=MLP_ACTIVATIONS)  # relu2: squared ReLU
    tie_lm_head: bool = setting(False)       # logits = x @ wte.T, no separate lm_head matrix
    zero_init: tuple = setting(())           # matrix kinds initialised to zero (drawing no random numbers)
    # self: each position attends only to itself (the "no KV cache" ablation)
    attention: str = setting('causal', choices=ATTENTION_KINDS)
    bos: str = setting('last', choices=BOS_POSITIONS)  # id of the BOS token: 'last' = vocab_size - 1, 'first' = 0

    def __post_init__(self):
        if isinstance(self.zero_init, list):  # as JSON and a caller write it; kept as a tuple (the config is hashed)
            object.__setattr__(self, 'zero_init', tuple(self.zero_init))
        self.validate()

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def bos_id(self):
        return 0 if self.bos == 'first' else self.vocab_size - 1

    def validate(self):
        check_settings(self)
        if self.n_embd % self.n_head:
            raise SettingError(lambda name: f"{name('n_embd')} {self.n_embd} is not divisible by {name('n_head')} "
                                            f"{self.n_head}; choose sizes where n_embd is a multiple of n_head")
        unknown = set(self.zero_init) - set(ZERO_INIT_CHOICES)
        if unknown:
            raise SettingError(lambda name: f"{name('zero_init')} accepts {', '.join(ZERO_INIT_CHOICES)}, "
                                            f"got {sorted(unknown)}")
        return self

    def to_dict(self):
        d = asdict(self)
        d['zero_init'] = list(self.zero_init)
        return d


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. The defaults are microgpt's: 1000 steps of one document, Adam, lr 0.01 decayed linearly to 0."""
    steps: int = setting(1000, 'training steps', at_least=1)
    lr: float = setting(0.01, 'peak Adam learning rate', at_least=0)
    beta1: float = setting(0.85, 'Adam beta1, in [0, 1)', at_least=0)
    beta2: float = setting(0.99, 'Adam beta2, in [0, 1)', at_least=0)
    eps: float = setting(1e-8)
    seed: int = setting(42, 'seed of the one random stream: shuffle, init, sampling', at_least=0)
    batch_size: int = setting(1, 'documents per step, padded and masked; the loss is the mean over real tokens',
                              at_least=1)
    weight_decay: float = setting(0.0, 'decoupled (AdamW) weight decay', at_least=0)
    grad_clip: float = setting(0.0, 'clip the global gradient norm to this; 0 = off', at_least=0)
    lr_schedule: str = setting('linear', 'decay after warmup, towards 0 at the last step', choices=LR_SCHEDULES)
    warmup: int = setting(0, 'linear warmup steps', at_least=0)
    dropout: float = setting(0.0, 'dropout of the embeddings and of each attention and MLP output while training, '
                                  'rounded to a multiple of 1/65536; numpy, fused and torch engines')

    def __post_init__(self):
        self.validate()

    def validate(self):
        check_settings(self)
        for beta in ('beta1', 'beta2'):
            if not getattr(self, beta) < 1:
                raise SettingError(lambda name: f"{name(beta)} must be in [0, 1), got {getattr(self, beta)}")
        if not self.eps >= FLOAT32_TINY:
            raise SettingError(lambda name: f"Adam {name('eps')} must be at least {FLOAT32_TINY:.4g} (float32's "
                                            f"smallest normal number: the fused engine flushes smaller numbers to "
                                            f"zero, and float32 cannot hold them), got {self.eps}")
        if not self.warmup < self.steps:
            raise SettingError(lambda name: f"{name('warmup')} must be in [0, steps), got {self.warmup} with "
                                            f"{name('steps')} {self.steps}")
        if not (self.dropout == 0 or 0 < round(self.dropout * DROPOUT_LEVELS) < DROPOUT_LEVELS):
            raise SettingError(lambda name: f"{name('dropout')} must be 0 or in [1/65536, 1 - 1/65536] (it is "
                                            f"rounded to a multiple of 1/65536), got {self.dropout}")
        return self

    def check_engine(self, engine_name):
        """Refuse settings the engine does not build, naming the one that does."""
        if self.dropout and engine_name not in ('numpy', 'fused', 'torch'):
            raise MicrogptError(f"--dropout is built in the numpy, fused and torch engines, not in the {engine_name} "
                                f"engine: train with --engine fused")


@dataclass(frozen=True)
class SampleConfig:
    """Sampling after training, and `microgpt sample`."""
    num_samples: int = setting(20, 'names to sample', at_least=0)
    temperature: float = setting(0.5, 'sampling temperature, at least 1e-300; lower is more conservative')
    top_k: int = setting(0, 'sample only from the k most likely tokens; 0 = all', at_least=0)
    top_p: float = setting(1.0, 'sample from the smallest set of tokens whose probability reaches p; 1 = all')

    def __post_init__(self):
        check_settings(self)
        if not self.temperature > 0:
            raise SettingError(lambda name: f"{name('temperature')} must be > 0, got {self.temperature}")
        if self.temperature < 1e-300:  # sampling divides by it: 1e-320 ** -1 overflows a float
            raise SettingError(lambda name: f"{name('temperature')} must be at least 1e-300 (already the most likely "
                                            f"token every time), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SettingError(lambda name: f"{name('top_p')} must be in (0, 1], got {self.top_p}")

    def check_vocabulary(self, vocab_size):
        """A top_k of the model's whole vocabulary or more keeps every token: it would change nothing."""
        if self.top_k >= vocab_size:
            raise SettingError(lambda name: f"{name('top_k')} {self.top_k} keeps all of the model's {vocab_size} "
                                            f"tokens, which changes nothing; give at most {vocab_size - 1}, or leave "
                                            f"it out")


SAMPLING_KNOBS = ('temperature', 'top_k', 'top_p')


SAMPLE_SEED = 42  # `microgpt sample`'s seed, microgpt's


def check_seed(seed):
    """A seed given outside TrainConfig (sample's, export --train's) is bounded as TrainConfig's: random.Random
    seeds with the absolute value, so -1 would silently be 1."""
    TrainConfig(seed=seed)


def check_sampling_flags(given, others=()):
    """`given`: the SampleConfig settings the user gave (name -> value); `others`: other flags given that only
    shape the samples. With num_samples 0 nothing is sampled, so each would change nothing."""
    unused = [key for key in SAMPLING_KNOBS if key in given]
    if given.get('num_samples') == 0 and (unused or others):
        raise SettingError(lambda name: f"{', '.join([*map(name, unused), *others])}: nothing is sampled with "
                                        f"{name('num_samples')} 0; leave them out, or sample")


# ---- the one parameter table: every engine's flat layout, the checkpoint names, the C and JavaScript
# exports and the PyTorch model derive from it

MLP_EXPANSION = 4   # the MLP's hidden width is MLP_EXPANSION * n_embd
RMSNORM_EPS = 1e-5  # RMSNorm: x / sqrt(mean(x^2) + RMSNORM_EPS), no learned gain (microgpt's)
NOTHING_TO_PREDICT = "the batch has no token to predict: a document needs at least 2 tokens"

# Per layer, in state-dict order: (kind, rows, cols) in units of n_embd. attn_wq, attn_wk and attn_wv are
# adjacent, so the engines may read them as one (3C, C) matrix.
LAYER_PARAMETERS = (('attn_wq', 1, 1), ('attn_wk', 1, 1), ('attn_wv', 1, 1), ('attn_wo', 1, 1),
                    ('mlp_fc1', MLP_EXPANSION, 1), ('mlp_fc2', 1, MLP_EXPANSION))


@dataclass(frozen=True)
class Parameter:
    """One row of the parameter table: a (rows, cols) matrix stored at `offset` in a flat buffer."""
    name: str        # state-dict name: 'wte', 'wpe', 'lm_head', 'layer0.attn_wq', ...
    kind: str        # the name without its layer: 'wte', ..., 'attn_wq', ..., 'mlp_fc2'
    layer: int       # layer index, or -1 outside the layers
    rows: int
    cols: int
    offset: int      # first element in the flat (P,) buffer

    @property
    def shape(self):
        return (self.rows, self.cols)

    @property
    def size(self):
        return self.rows * self.cols


def parameter_table(cfg):
    """The model's parameters in state-dict order (the order they are drawn and stored in): wte, wpe,
    lm_head (unless tied to wte), then each layer's LAYER_PARAMETERS. Offsets are into one flat buffer."""
    C, V = cfg.n_embd, cfg.vocab_size
    rows = [('wte', -1, V, C), ('wpe', -1, cfg.block_size, C)]
    if not cfg.tie_lm_head:
        rows.append(('lm_head', -1, V, C))
    rows += [(kind, i, r * C, c * C) for i in range(cfg.n_layer) for kind, r, c in LAYER_PARAMETERS]
    table, offset = [], 0
    for kind, layer, r, c in rows:
        name = kind if layer < 0 else f'layer{layer}.{kind}'
        table.append(Parameter(name, kind, layer, r, c, offset))
        offset += r * c
    return tuple(table)


def parameter_shapes(cfg):
    """Name -> (rows, cols) in state-dict order."""
    return {p.name: p.shape for p in parameter_table(cfg)}


def num_parameters(cfg):
    """The table's total size, counted without building the table (a million layers are checked in no time)."""
    C, V = cfg.n_embd, cfg.vocab_size
    outside = (V + cfg.block_size + (0 if cfg.tie_lm_head else V)) * C
    return outside + cfg.n_layer * sum(r * c for _, r, c in LAYER_PARAMETERS) * C * C


def dropout_sites(cfg):
    """Dropout is applied at 1 + 2 * n_layer places: the embeddings, then each layer's attention and MLP output."""
    return 1 + 2 * cfg.n_layer


def init_parameters(cfg, rng: random.Random):
    """Name -> rows of floats, each drawn from rng.gauss(0, init_std) in microgpt's order.

    Zero-initialised matrices draw nothing, so they do not shift the random stream of the others.
    """
    params = {}
    for p in parameter_table(cfg):
        if p.kind in cfg.zero_init:
            params[p.name] = [[0.0] * p.cols for _ in range(p.rows)]
        else:
            params[p.name] = [[rng.gauss(0, cfg.init_std) for _ in range(p.cols)] for _ in range(p.rows)]
    return params


def learning_rates(tcfg: TrainConfig, start, stop):
    """learning_rate of each 0-based step start .. stop - 1, the same floats: the training loop's, an engine call's
    steps at a time (a call a step is on the hot path)."""
    if start >= tcfg.warmup and tcfg.lr_schedule == 'constant':
        return [tcfg.lr] * (stop - start)
    if tcfg.warmup == 0 and tcfg.lr_schedule == 'linear':
        lr, steps = tcfg.lr, tcfg.steps
        return [lr * (1 - step / steps) for step in range(start, stop)]  # learning_rate's expression
    return [learning_rate(tcfg, step) for step in range(start, stop)]


def learning_rate(tcfg: TrainConfig, step):
    """The learning rate of 0-based `step`: linear warmup, then the schedule decays towards 0 at `steps`."""
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    if tcfg.lr_schedule == 'constant':
        return tcfg.lr
    if tcfg.lr_schedule == 'cosine':
        progress = (step - tcfg.warmup) / (tcfg.steps - tcfg.warmup)
        return tcfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if tcfg.warmup == 0:
        return tcfg.lr * (1 - step / tcfg.steps)  # microgpt's exact expression, kept for bit-exactness
    return tcfg.lr * (1 - (step - tcfg.warmup) / (tcfg.steps - tcfg.warmup))
