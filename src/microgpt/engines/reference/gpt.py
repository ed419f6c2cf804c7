"""The reference engine: Karpathy's microgpt, operation for operation, on the scalar autograd `Value`.

Standard library only. It is the ground truth every faster engine is tested against, and with the
default configuration it reproduces microgpt.py's output byte for byte. The model is a set of
functions over a state dict of named matrices (lists of rows of `Value`s); one token is processed
per call, with a KV cache, exactly as in microgpt.
"""

from .autograd import Value, without_cycle_collector
from ...config import NOTHING_TO_PREDICT, RMSNORM_EPS, init_parameters, num_parameters
from .. import EngineState, OneProcess, check_batch, check_decoder_step, check_state, run_steps


def linear(x, w):
    return [sum(wi * xi for wi, xi in zip(wo, x)) for wo in w]


def softmax(logits):
    max_val = max(val.data for val in logits)
    exps = [(val - max_val).exp() for val in logits]
    total = sum(exps)
    return [e / total for e in exps]


def rmsnorm(x):
    ms = sum(xi * xi for xi in x) / len(x)
    scale = (ms + RMSNORM_EPS) ** -0.5
    return [xi * scale for xi in x]


def gpt(token_id, pos_id, keys, values, state_dict, cfg):
    """Logits for the next token, given one token at one position; appends its keys/values to the cache."""
    head_dim = cfg.head_dim
    tok_emb = state_dict['wte'][token_id]
    pos_emb = state_dict['wpe'][pos_id]
    x = [t + p for t, p in zip(tok_emb, pos_emb)]
    if cfg.norm == 'microgpt':
        x = rmsnorm(x)

    for li in range(cfg.n_layer):
        x_residual = x
        if cfg.norm != 'none':
            x = rmsnorm(x)
        q = linear(x, state_dict[f'layer{li}.attn_wq'])
        k = linear(x, state_dict[f'layer{li}.attn_wk'])
        v = linear(x, state_dict[f'layer{li}.attn_wv'])
        keys[li].append(k)
        values[li].append(v)
        # the "no KV cache" ablation: each position sees only its own key and value
        visible_keys = keys[li] if cfg.attention == 'causal' else [k]
        visible_values = values[li] if cfg.attention == 'causal' else [v]
        x_attn = []
        for h in range(cfg.n_head):
            hs = h * head_dim
            q_h = q[hs:hs + head_dim]
            k_h = [ki[hs:hs + head_dim] for ki in visible_keys]
            v_h = [vi[hs:hs + head_dim] for vi in visible_values]
            attn_logits = [sum(q_h[j] * k_h[t][j] for j in range(head_dim)) / head_dim ** 0.5
                           for t in range(len(k_h))]
            attn_weights = softmax(attn_logits)
            head_out = [sum(attn_weights[t] * v_h[t][j] for t in range(len(v_h))) for j in range(head_dim)]
            x_attn.extend(head_out)
        x = linear(x_attn, state_dict[f'layer{li}.attn_wo'])
        x = [a + b for a, b in zip(x, x_residual)]

        x_residual = x
        if cfg.norm == 'microgpt':
            x = rmsnorm(x)
        x = linear(x, state_dict[f'layer{li}.mlp_fc1'])
        x = [xi.relu() for xi in x] if cfg.mlp_activation == 'relu' else [xi.relu2() for xi in x]
        x = linear(x, state_dict[f'layer{li}.mlp_fc2'])
        x = [a + b for a, b in zip(x, x_residual)]

    return linear(x, state_dict['wte' if cfg.tie_lm_head else 'lm_head'])


def document_loss_terms(tokens, state_dict, cfg):
    """-log p(target) for each of the first min(block_size, len(tokens) - 1) positions of one document."""
    n = min(cfg.block_size, len(tokens) - 1)
    keys, values = [[] for _ in range(cfg.n_layer)], [[] for _ in range(cfg.n_layer)]
    losses = []
    for pos_id in range(n):
        token_id, target_id = tokens[pos_id], tokens[pos_id + 1]
        logits = gpt(token_id, pos_id, keys, values, state_dict, cfg)
        probs = softmax(logits)
        losses.append(-probs[target_id].log())
    return losses


def batch_loss(batch, state_dict, cfg):
    """Mean negative log-likelihood over every predicted token of the batch's documents."""
    losses = [term for tokens in batch for term in document_loss_terms(tokens, state_dict, cfg)]
    if not losses:
        raise ValueError(NOTHING_TO_PREDICT)
    return (1 / len(losses)) * sum(losses)


class ReferenceEngine(OneProcess):
    """Parameters as `Value`s, gradients by the scalar autograd, Adam on Python floats."""
    name = 'reference'
    dtype = 'float64'
    chunk_steps = 1

    def __init__(self, cfg, rng):
        self.cfg = cfg
        self.state_dict = {name: [[Value(x) for x in row] for row in rows]
                           for name, rows in init_parameters(cfg, rng).items()}
        self.params = [p for mat in self.state_dict.values() for row in mat for p in row]
        self.m = [0.0] * len(self.params)
        self.v = [0.0] * len(self.params)
        self.adam_steps = 0
        assert len(self.params) == num_parameters(cfg)

    def num_params(self):
        return len(self.params)

    def loss(self, batch):
        """Loss of the batch, forward only: the graph is built but not walked back."""
        with without_cycle_collector():
            return batch_loss(check_batch(batch, self.cfg.vocab_size), self.state_dict, self.cfg).data

    def loss_and_grads(self, batch, dropout=0.0, seed_and_step=None):
        """Loss of the batch; leaves d(loss)/d(param) in each parameter's .grad."""
        if dropout:
            raise ValueError("the reference engine has no dropout")
        for p in self.params:
            p.grad = 0
        with without_cycle_collector():
            loss = batch_loss(check_batch(batch, self.cfg.vocab_size), self.state_dict, self.cfg)
            loss.backward()
            loss_value = loss.data
            del loss  # free the graph by reference counting while the collector is off
        return loss_value

    def train_step(self, batch, lr_t, tcfg):
        """One Adam step on a list of token sequences; returns the loss before the update."""
        tcfg.check_engine(self.name)
        loss = self.loss_and_grads(batch)
        self.adam_update(lr_t, tcfg)
        return loss

    def adam_update(self, lr_t, tcfg):
        beta1, beta2, eps_adam = tcfg.beta1, tcfg.beta2, tcfg.eps
        step = self.adam_steps
        clip_scale = self._clip_scale(tcfg.grad_clip)
        m, v = self.m, self.v
        for i, p in enumerate(self.params):
            grad = p.grad if clip_scale is None else p.grad * clip_scale
            m[i] = beta1 * m[i] + (1 - beta1) * grad
            v[i] = beta2 * v[i] + (1 - beta2) * grad ** 2
            m_hat = m[i] / (1 - beta1 ** (step + 1))
            v_hat = v[i] / (1 - beta2 ** (step + 1))
            if tcfg.weight_decay:
                p.data -= lr_t * tcfg.weight_decay * p.data  # decoupled (AdamW) decay
            p.data -= lr_t * m_hat / (v_hat ** 0.5 + eps_adam)
            p.grad = 0
        self.adam_steps += 1

    def _clip_scale(self, max_norm):
        if not max_norm:
            return None
        norm = sum(p.grad * p.grad for p in self.params) ** 0.5
        return min(1.0, max_norm / (norm + 1e-6))

    def decoder(self):
        """A decoder over this engine's weights (see decoding.generate)."""
        return _ReferenceDecoder(self.state_dict, self.cfg)

    def weights(self):
        """Name -> rows of floats."""
        return {name: [[p.data for p in row] for row in rows] for name, rows in self.state_dict.items()}

    def gradients(self):
        """Name -> rows of floats: the gradients left by the last loss_and_grads."""
        return {name: [[p.grad for p in row] for row in rows] for name, rows in self.state_dict.items()}

    def train_steps(self, doc_tokens, start, stop, tcfg, lrs):
        return run_steps(self, doc_tokens, start, stop, tcfg, lrs)

    def state(self):
        return EngineState(self.weights(), list(self.m), list(self.v), self.adam_steps)

    def load_state(self, state):
        check_state(state, self.cfg)
        for name, rows in self.state_dict.items():
            for row, values in zip(rows, state.weights[name]):
                for p, x in zip(row, values):
                    p.data = float(x)
        if state.adam_m is not None and state.adam_v is not None:
            self.m[:] = [float(x) for x in state.adam_m]
            self.v[:] = [float(x) for x in state.adam_v]
        self.adam_steps = state.adam_steps


class _ReferenceDecoder:
    def __init__(self, state_dict, cfg):
        self.state_dict, self.cfg = state_dict, cfg
        self.reset()

    def reset(self):
        self.keys = [[] for _ in range(self.cfg.n_layer)]
        self.values = [[] for _ in range(self.cfg.n_layer)]

    def step(self, token_id, pos_id):
        check_decoder_step(token_id, pos_id, self.cfg)
        with without_cycle_collector():
            logits = gpt(token_id, pos_id, self.keys, self.values, self.state_dict, self.cfg)
            return [logit.data for logit in logits]
