"""Named configurations of the systems this project grew from, as overrides of config fields.

A preset names only what it changes: every other field keeps its dataclass's default (config.py, and the
run's settings in train/run.py), and a flag given on the command line wins over both.
"""

from dataclasses import fields

from .config import ModelConfig, check_sampling_flags
from .errors import MicrogptError

PRESETS = {
    # Karpathy's microgpt.py: 4,192 parameters on names
    'microgpt': {},
    # zeroclawgpt (Rust): short context, tied embeddings, squared ReLU, zero-initialised output
    # projections, GPT-2-style std; 3,632 parameters
    'zeroclaw': {'block_size': 8, 'tie_lm_head': True, 'mlp_activation': 'relu2',
                 'zero_init': ('attn_wo', 'mlp_fc2'), 'init_std': 0.02, 'beta1': 0.9, 'beta2': 0.95,
                 'steps': 5000},
    # the ESP32 port: BOS is token 0, one RMSNorm (before attention), std 0.1; 4,192 parameters
    'esp32': {'bos': 'first', 'init_std': 0.1, 'norm': 'esp32', 'temperature': 0.8},
    # makemore's transformer scaled to this tool: 4 layers x 64 channels, batches of 32, AdamW
    'makemore': {'n_layer': 4, 'n_embd': 64, 'batch_size': 32, 'lr': 5e-4,
                 'weight_decay': 0.01, 'init_std': 0.02, 'beta1': 0.9, 'lr_schedule': 'constant',
                 'steps': 5000, 'eval_every': 500},
}
DEFAULT_PRESET = 'microgpt'


def resolve(preset, explicit):
    """The settings `preset` overrides, with `explicit` (settings the user gave; None means not given) on top.
    Only here are the settings the user gave told from the preset's, so a flag that would change nothing is
    refused here (a preset's temperature with --num-samples 0 is no such flag)."""
    if preset not in PRESETS:
        raise MicrogptError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    explicit = {k: v for k, v in explicit.items() if v is not None}
    check_sampling_flags(explicit)
    return {**PRESETS[preset], **explicit}


def fields_of(config_class, settings):
    """The entries of `settings` that are fields of `config_class`: the keyword arguments that build it."""
    return {f.name: settings[f.name] for f in fields(config_class) if f.name in settings}


def model_settings(settings):
    """The ModelConfig fields of resolved settings (vocab_size, which the data decides, is never among them)."""
    return fields_of(ModelConfig, settings)
