"""Named configurations of the systems this project grew from. A flag given on the command line wins."""

from .errors import MicrogptError

# Every setting a preset may touch, with microgpt's value: the base every preset starts from.
DEFAULTS = {
    # model
    'n_embd': 16, 'n_head': 4, 'n_layer': 1, 'block_size': 16, 'init_std': 0.08, 'norm': 'microgpt',
    'mlp_activation': 'relu', 'tie_lm_head': False, 'zero_init': (), 'attention': 'causal', 'bos': 'last',
    # optimisation
    'steps': 1000, 'lr': 0.01, 'beta1': 0.85, 'beta2': 0.99, 'batch_size': 1, 'weight_decay': 0.0,
    'grad_clip': 0.0, 'lr_schedule': 'linear', 'warmup': 0, 'dropout': 0.0,
    # evaluation and sampling
    'eval_every': 0, 'temperature': 0.5,
}

# Which of those settings build the ModelConfig and which the TrainConfig.
MODEL_KEYS = ('n_embd', 'n_head', 'n_layer', 'block_size', 'init_std', 'norm', 'mlp_activation', 'tie_lm_head',
              'zero_init', 'attention', 'bos')
TRAIN_KEYS = ('steps', 'lr', 'beta1', 'beta2', 'batch_size', 'weight_decay', 'grad_clip', 'lr_schedule', 'warmup',
              'dropout')

PRESETS = {
    # Karpathy's microgpt.py: 4,192 parameters on names
    'microgpt': {},
    # zeroclawgpt (Rust): short context, tied embeddings, squared ReLU, zero-initialised output
    # projections, GPT-2-style std; 3,632 parameters
    'zeroclaw': {'block_size': 8, 'tie_lm_head': True, 'mlp_activation': 'relu2',
                 'zero_init': ('attn_wo', 'mlp_fc2'), 'init_std': 0.02, 'beta1': 0.9, 'beta2': 0.95,
                 'steps': 5000},
    # the ESP32 port: BOS is token 0, one RMSNorm (before attention), std 0.1; 4,192 parameters
    'esp32': {'bos': 'first', 'init_std': 0.1, 'norm': 'esp32', 'beta1': 0.85, 'beta2': 0.99,
              'temperature': 0.8},
    # makemore's transformer scaled to this tool: 4 layers x 64 channels, batches of 32, AdamW
    'makemore': {'n_layer': 4, 'n_embd': 64, 'n_head': 4, 'batch_size': 32, 'lr': 5e-4,
                 'weight_decay': 0.01, 'init_std': 0.02, 'beta1': 0.9, 'beta2': 0.99,
                 'lr_schedule': 'constant', 'steps': 5000, 'eval_every': 500},
}


def resolve(preset, explicit):
    """Settings for `preset` with `explicit` (flags the user gave, None meaning not given) on top."""
    if preset not in PRESETS:
        raise MicrogptError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    settings = {**DEFAULTS, **PRESETS[preset]}
    settings.update({k: v for k, v in explicit.items() if v is not None})
    return settings


def model_settings(settings):
    """The ModelConfig fields (all but vocab_size) of resolved settings."""
    return {k: settings[k] for k in MODEL_KEYS}


def train_settings(settings):
    """The TrainConfig fields (all but seed) of resolved settings."""
    return {k: settings[k] for k in TRAIN_KEYS}
