"""The engines by name. Each is imported only when asked for, so `--engine reference` never loads NumPy."""

from ..errors import MicrogptError

ENGINES = ('numpy', 'fused', 'reference')
BENCH_ENGINES = ENGINES + ('torch',)  # `microgpt bench` also times the PyTorch baseline (torch_baseline)
DEFAULT_ENGINE = 'numpy'
DTYPES = ('float64', 'float32')


def make_engine(name, cfg, rng, dtype='float64'):
    """A freshly initialised engine; its parameters are drawn from `rng` in state-dict order."""
    if dtype not in DTYPES:
        raise MicrogptError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if name == 'reference':
        if dtype != 'float64':
            raise MicrogptError("the reference engine computes in Python floats (float64) only; "
                                "use --engine numpy for --dtype float32")
        from .reference.gpt import ReferenceEngine
        return ReferenceEngine(cfg, rng)
    if name == 'numpy':
        from .numpy.engine import NumpyEngine
        return NumpyEngine(cfg, rng, dtype)
    if name == 'fused':
        from .fused.engine import FusedEngine
        return FusedEngine(cfg, rng, dtype)
    raise MicrogptError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
