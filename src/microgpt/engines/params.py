"""Flat parameter buffers with named views, for the engines that keep their model in arrays (numpy, fused).

One (4, P) array holds the parameters, their gradients and Adam's two moments, each row laid out by the
parameter table (config.parameter_table); every parameter is a (rows, cols) view of its row, so an
engine can work on whole buffers (Adam) or on named matrices (the model) without copying.
"""

import numpy as np

from ..config import init_parameters, parameter_table
from . import EngineState, OneProcess, check_state


class ParameterBuffers(OneProcess):
    """state (4, P): parameters, gradients, Adam m, Adam v; params / grads: name -> (rows, cols) views."""

    def __init__(self, cfg, rng, dtype):
        self.cfg = cfg
        self.dtype = np.dtype(dtype).name
        self.table = parameter_table(cfg)
        total = sum(p.size for p in self.table)
        self.state_buffer = np.zeros((4, total), self.dtype)          # (4, P)
        self.flat, self.grad_flat, self.m, self.v = self.state_buffer  # (P,) each
        self.offsets = {p.name: p.offset for p in self.table}
        self.params = self._views(self.flat)
        self.grads = self._views(self.grad_flat)
        self.adam_steps = 0
        for name, rows in init_parameters(cfg, rng).items():
            self.params[name][...] = rows

    def _views(self, flat):
        return {p.name: flat[p.offset:p.offset + p.size].reshape(p.shape) for p in self.table}

    def num_params(self):
        return self.flat.size

    def weights(self):
        return {name: view.copy() for name, view in self.params.items()}

    def gradients(self):
        return {name: view.copy() for name, view in self.grads.items()}

    def state(self):
        return EngineState(self.weights(), self.m.copy(), self.v.copy(), self.adam_steps)

    def load_state(self, state):
        check_state(state, self.cfg)
        for name, view in self.params.items():
            view[...] = state.weights[name]
        if state.adam_m is not None and state.adam_v is not None:
            self.m[...] = state.adam_m
            self.v[...] = state.adam_v
        self.adam_steps = state.adam_steps
