"""Model and training configuration, and the parameter layout every engine shares.

The layout (names, shapes, order) is microgpt's state dict: `wte`, `wpe`, `lm_head`, then per layer
`attn_wq`, `attn_wk`, `attn_wv`, `attn_wo`, `mlp_fc1`, `mlp_fc2`. Both engines, checkpoints and the C
export use these names, and parameters are drawn from one `random.Random` in exactly this order, so
every engine starts from the same weights as Karpathy's script for the same seed.
"""

import math
import random
from dataclasses import asdict, dataclass, fields

from .errors import MicrogptError

NORM_PLACEMENTS = ('microgpt', 'esp32', 'none')
MLP_ACTIVATIONS = ('relu', 'relu2')
ATTENTION_KINDS = ('causal', 'self')
BOS_POSITIONS = ('last', 'first')
LR_SCHEDULES = ('linear', 'cosine', 'constant')
ZERO_INIT_CHOICES = ('attn_wo', 'mlp_fc2')
DROPOUT_LEVELS = 1 << 16  # dropout rates are multiples of 1 / 65536: a mask element is 16 random bits (dropout.py)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. The defaults are Karpathy's microgpt; the switches exist for the presets and the study."""
    vocab_size: int
    n_embd: int = 16
    n_head: int = 4
    n_layer: int = 1
    block_size: int = 16
    init_std: float = 0.08
    norm: str = 'microgpt'         # microgpt: after embedding + before attn + before mlp; esp32: before attn only
    mlp_activation: str = 'relu'   # relu2: squared ReLU
    tie_lm_head: bool = False      # logits = x @ wte.T, no separate lm_head matrix
    zero_init: tuple = ()          # matrix kinds initialised to zero (drawing no random numbers)
    attention: str = 'causal'      # self: each position attends only to itself (the "no KV cache" ablation)
    bos: str = 'last'              # id of the BOS token: 'last' = vocab_size - 1, 'first' = 0

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def bos_id(self):
        return 0 if self.bos == 'first' else self.vocab_size - 1

    def validate(self):
        positive = {'vocab_size': self.vocab_size, 'n_embd': self.n_embd, 'n_head': self.n_head,
                    'n_layer': self.n_layer, 'block_size': self.block_size}
        for name, value in positive.items():
            if value < 1:
                raise MicrogptError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.n_embd % self.n_head:
            raise MicrogptError(f"--n-embd {self.n_embd} is not divisible by --n-head {self.n_head}; "
                                f"choose sizes where n_embd is a multiple of n_head")
        if self.init_std < 0:
            raise MicrogptError(f"init std must be >= 0, got {self.init_std}")
        for name, value, allowed in (('norm', self.norm, NORM_PLACEMENTS),
                                     ('mlp_activation', self.mlp_activation, MLP_ACTIVATIONS),
                                     ('attention', self.attention, ATTENTION_KINDS),
                                     ('bos', self.bos, BOS_POSITIONS)):
            if value not in allowed:
                raise MicrogptError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        unknown = set(self.zero_init) - set(ZERO_INIT_CHOICES)
        if unknown:
            raise MicrogptError(f"zero_init accepts {', '.join(ZERO_INIT_CHOICES)}, got {sorted(unknown)}")
        return self

    def to_dict(self):
        d = asdict(self)
        d['zero_init'] = list(self.zero_init)
        return d

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MicrogptError(f"unknown model settings {sorted(unknown)}: the checkpoint was written by a "
                                f"newer microgpt; upgrade microgpt to load it")
        d = dict(d)
        d['zero_init'] = tuple(d.get('zero_init', ()))
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. The defaults are microgpt's: 1000 steps of one document, Adam, lr 0.01 decayed linearly to 0."""
    steps: int = 1000
    lr: float = 0.01
    beta1: float = 0.85
    beta2: float = 0.99
    eps: float = 1e-8
    seed: int = 42
    batch_size: int = 1
    weight_decay: float = 0.0
    grad_clip: float = 0.0         # 0 = no clipping; else clip the global gradient norm to this value
    lr_schedule: str = 'linear'
    warmup: int = 0
    dropout: float = 0.0           # of the embeddings and of each residual branch's output, while training

    def validate(self):
        if self.steps < 1:
            raise MicrogptError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise MicrogptError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr >= 0:
            raise MicrogptError(f"--lr must be >= 0, got {self.lr}")
        for name, beta in (('beta1', self.beta1), ('beta2', self.beta2)):
            if not 0 <= beta < 1:
                raise MicrogptError(f"--{name} must be in [0, 1), got {beta}")
        if not self.eps > 0:
            raise MicrogptError(f"Adam eps must be > 0, got {self.eps}")
        if not self.weight_decay >= 0:
            raise MicrogptError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not self.grad_clip >= 0:
            raise MicrogptError(f"--grad-clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise MicrogptError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= self.warmup < self.steps:
            raise MicrogptError(f"--warmup must be in [0, steps), got {self.warmup} with --steps {self.steps}")
        if not (self.dropout == 0 or 0 < round(self.dropout * DROPOUT_LEVELS) < DROPOUT_LEVELS):
            raise MicrogptError(f"--dropout must be 0 or in [1/65536, 1 - 1/65536] (it is rounded to a multiple of "
                                f"1/65536), got {self.dropout}")
        return self

    def check_engine(self, engine_name):
        """Refuse settings the engine does not build, naming the one that does."""
        if self.dropout and engine_name not in ('numpy', 'fused'):
            raise MicrogptError(f"--dropout is built in the numpy and fused engines, not in the {engine_name} "
                                f"engine: train with --engine fused")


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
    return sum(p.size for p in parameter_table(cfg))


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
