/* microgpt.js: microgpt's GPT a fourth time, in JavaScript and float32, for the exported web page.
 *
 * The same model as the numpy engine (src/microgpt/engines/numpy), written for one document at a time:
 *   - the layout is the ONE parameter table (microgpt.config.parameter_table), emitted into the page as data:
 *     every matrix is a view of one flat Float32Array at the table's offset, (rows, cols) row-major, as the
 *     engines' ParameterBuffers are, and carries the table's rows and cols, which every matrix product reads;
 *     nothing here knows the order or the shapes by itself;
 *   - Decoder.step is engines/numpy's decoder (and the C export's forward()), operation for operation like the
 *     C program: each matrix-vector row sums left to right in float32, softmax's exp in double rounded to float32;
 *     so microgpt.export.c.logits_like_c is a bit-exact Python mirror of its logits;
 *   - lossAndGrads is engines/numpy/engine.py's loss_and_grads for a batch of one document (B = 1), each
 *     layer's backward in reverse, gradients summed with +=, attention's gradient into every earlier key and
 *     value; adamUpdate is its adam_update (no weight decay, no clipping: microgpt's optimiser);
 *   - initParameters is config.init_parameters: drawn from an rng with Python's gauss (sampling.js's
 *     PythonRandom, CPython's random.Random), so a seed gives microgpt's initial weights.
 * Every float32 result is rounded with f32 (Math.fround); rounding a double +, -, *, / or sqrt of float32
 * operands to float32 gives exactly the float32 operation.
 *
 * Dimension letters as in the engines: T positions, C n_embd, NH heads, HS head size (C / NH), H = 4C the
 * MLP's width, V vocabulary. No DOM here: the page and the training worker (worker.js) both load it.
 */
'use strict';

const f32 = Math.fround;

// ---- the parameters: views of one flat buffer, from the parameter table

function parameterViews(table, flat) {
  const w = {};
  for (const p of table) {
    const view = flat.subarray(p.offset, p.offset + p.rows * p.cols);  // (rows, cols), row-major
    w[p.name] = Object.assign(view, {rows: p.rows, cols: p.cols});
  }
  return w;
}

function numParameters(table) {
  return table.reduce((total, p) => total + p.rows * p.cols, 0);
}

// out (rows,) = w (rows, cols) @ x (cols,), each row's sum left to right in float32 (the C export's matvec);
// the shape is the parameter table's
function matvec(w, x, out) {
  const rows = w.rows, cols = w.cols;
  for (let r = 0; r < rows; r++) {
    let acc = 0;
    const row = r * cols;
    for (let j = 0; j < cols; j++) acc = f32(acc + f32(w[row + j] * x[j]));
    out[r] = acc;
  }
  return out;
}

// RMSNorm without gain: out = x * (mean(x^2) + eps)^-1/2; returns the scale, which the backward needs
function rmsnorm(x, out, eps) {
  const C = x.length;
  let ms = 0;
  for (let i = 0; i < C; i++) ms = f32(ms + f32(x[i] * x[i]));
  ms = f32(ms / C);
  const scale = f32(1 / f32(Math.sqrt(f32(ms + eps))));
  for (let i = 0; i < C; i++) out[i] = f32(x[i] * scale);
  return scale;
}

// dx = s * (dout - y * sum(dout * y) / C), from y = x * s (engines/numpy/layers.py: rmsnorm_backward)
function rmsnormBackward(dout, y, scale, dx) {
  const C = y.length;
  let dot = 0;
  for (let i = 0; i < C; i++) dot = f32(dot + f32(dout[i] * y[i]));
  dot = f32(dot / C);
  for (let i = 0; i < C; i++) dx[i] = f32(scale * f32(dout[i] - f32(y[i] * dot)));
  return dx;
}

// ---- inference: one position per call, with a KV cache (engines/numpy's _NumpyDecoder, the C forward())

class Decoder {
  constructor(spec, flat) {
    const cfg = spec.cfg;
    this.cfg = cfg;
    this.eps = f32(spec.rmsnorm_eps);
    this.scale = f32(spec.attn_scale);          // float32 of (HS ** 0.5) ** -1, as the engines round it
    this.w = parameterViews(spec.table, flat);
    const C = cfg.n_embd, T = cfg.block_size;
    this.keys = new Float32Array(cfg.n_layer * T * C);    // (L, T, C)
    this.values = new Float32Array(cfg.n_layer * T * C);  // (L, T, C)
    this.x = new Float32Array(C);
    this.xn = new Float32Array(C);
    this.q = new Float32Array(C);
    this.y = new Float32Array(C);
    this.branch = new Float32Array(C);
    this.h = new Float32Array(spec.mlp_expansion * C);     // (H,)
    this.logits = new Float32Array(cfg.vocab_size);        // (V,)
    this.attention = [];  // [layer][head][pos] -> (t,) attention probabilities of that query, for the heatmaps
    this.reset();
  }

  reset() {
    this.attention = Array.from({length: this.cfg.n_layer}, () => Array.from({length: this.cfg.n_head}, () => []));
  }

  step(token, pos) {
    const cfg = this.cfg, w = this.w, C = cfg.n_embd, H = this.h.length, T = cfg.block_size;
    const x = this.x, xn = this.xn;
    for (let i = 0; i < C; i++) x[i] = f32(w.wte[token * C + i] + w.wpe[pos * C + i]);
    if (cfg.norm === 'microgpt') rmsnorm(x, x, this.eps);
    for (let l = 0; l < cfg.n_layer; l++) {
      const p = 'layer' + l + '.';
      if (cfg.norm !== 'none') rmsnorm(x, xn, this.eps); else xn.set(x);
      const cache = l * T * C + pos * C;
      matvec(w[p + 'attn_wq'], xn, this.q);
      matvec(w[p + 'attn_wk'], xn, this.keys.subarray(cache, cache + C));
      matvec(w[p + 'attn_wv'], xn, this.values.subarray(cache, cache + C));
      this.attend(l, pos);
      matvec(w[p + 'attn_wo'], this.y, this.branch);
      for (let i = 0; i < C; i++) x[i] = f32(x[i] + this.branch[i]);
      if (cfg.norm === 'microgpt') rmsnorm(x, xn, this.eps); else xn.set(x);
      matvec(w[p + 'mlp_fc1'], xn, this.h);
      for (let j = 0; j < H; j++) {
        const relu = this.h[j] > 0 ? this.h[j] : 0;
        this.h[j] = cfg.mlp_activation === 'relu2' ? f32(relu * relu) : relu;
      }
      matvec(w[p + 'mlp_fc2'], this.h, this.branch);
      for (let i = 0; i < C; i++) x[i] = f32(x[i] + this.branch[i]);
    }
    return matvec(cfg.tie_lm_head ? w.wte : w.lm_head, x, this.logits);
  }

  // y = softmax(q . k_t * scale) @ v over the cached positions, head by head
  attend(l, pos) {
    const cfg = this.cfg, C = cfg.n_embd, HS = C / cfg.n_head, T = cfg.block_size;
    const first = cfg.attention === 'self' ? pos : 0;
    const keys = this.keys, values = this.values, base = l * T * C;
    for (let h = 0; h < cfg.n_head; h++) {
      const att = new Float32Array(pos + 1 - first);  // (t,)
      let top = -Infinity;
      for (let t = first; t <= pos; t++) {
        let acc = 0;
        for (let d = 0; d < HS; d++) acc = f32(acc + f32(keys[base + t * C + h * HS + d] * this.q[h * HS + d]));
        att[t - first] = f32(acc * this.scale);
        top = Math.max(top, att[t - first]);
      }
      let total = 0;
      for (let t = 0; t < att.length; t++) {
        att[t] = f32(Math.exp(f32(att[t] - top)));
        total = f32(total + att[t]);
      }
      for (let t = 0; t < att.length; t++) att[t] = f32(att[t] / total);
      for (let d = 0; d < HS; d++) {
        let acc = 0;
        for (let t = first; t <= pos; t++) acc = f32(acc + f32(values[base + t * C + h * HS + d] * att[t - first]));
        this.y[h * HS + d] = acc;
      }
      this.attention[l][h][pos] = att;
    }
  }
}

// config.init_parameters in float32: each matrix drawn from rng.gauss(0, init_std) in the table's order;
// zero-initialised kinds draw nothing
function initParameters(spec, rng) {
  const flat = new Float32Array(numParameters(spec.table));
  for (const p of spec.table) {
    if (spec.cfg.zero_init.includes(p.kind)) continue;
    for (let i = 0; i < p.rows * p.cols; i++) flat[p.offset + i] = rng.gauss(0, spec.cfg.init_std);
  }
  return flat;
}

// ---- training: loss and gradients of one document (engines/numpy's loss_and_grads with B = 1)

// out (T, rows) = x (T, cols) @ w.T, w (rows, cols)
function linear(x, w, T) {
  const out = new Float32Array(T * w.rows);                                     // (T, rows)
  for (let t = 0; t < T; t++) matvec(w, x.subarray(t * w.cols, (t + 1) * w.cols), out.subarray(t * w.rows));
  return out;
}

// the backward of linear: dw (rows, cols) += dout.T @ x; returns dx (T, cols) = dout @ w
function linearBackward(dout, x, w, dw, T) {
  const rows = w.rows, cols = w.cols;
  const dx = new Float32Array(T * cols);                                        // (T, cols)
  for (let t = 0; t < T; t++) {
    for (let r = 0; r < rows; r++) {
      const g = dout[t * rows + r];
      if (g === 0) continue;  // adding 0 * anything finite changes nothing
      for (let j = 0; j < cols; j++) {
        dw[r * cols + j] = f32(dw[r * cols + j] + f32(g * x[t * cols + j]));
        dx[t * cols + j] = f32(dx[t * cols + j] + f32(g * w[r * cols + j]));
      }
    }
  }
  return dx;
}

// rows of RMSNorm: returns {out (T, C), scale (T,)}
function rmsnormRows(x, T, C, eps) {
  const out = new Float32Array(T * C), scale = new Float32Array(T);
  for (let t = 0; t < T; t++) scale[t] = rmsnorm(x.subarray(t * C, (t + 1) * C), out.subarray(t * C, (t + 1) * C), eps);
  return {out, scale};
}

function rmsnormRowsBackward(dout, norm, T, C) {
  const dx = new Float32Array(T * C);
  for (let t = 0; t < T; t++) {
    const rows = [t * C, (t + 1) * C];
    rmsnormBackward(dout.subarray(...rows), norm.out.subarray(...rows), norm.scale[t], dx.subarray(...rows));
  }
  return dx;
}

// causal (or self-only) multi-head attention of q over k, v, each (T, C); returns {y (T, C), probs (NH, T, T)}
function attentionForward(q, k, v, T, cfg, scale) {
  const C = cfg.n_embd, NH = cfg.n_head, HS = C / NH;
  const y = new Float32Array(T * C), probs = new Float32Array(NH * T * T);
  for (let h = 0; h < NH; h++) {
    for (let t = 0; t < T; t++) {
      const first = cfg.attention === 'self' ? t : 0, row = (h * T + t) * T;
      let top = -Infinity;
      for (let s = first; s <= t; s++) {
        let acc = 0;
        for (let d = 0; d < HS; d++) acc = f32(acc + f32(q[t * C + h * HS + d] * k[s * C + h * HS + d]));
        probs[row + s] = f32(acc * scale);
        top = Math.max(top, probs[row + s]);
      }
      let total = 0;
      for (let s = first; s <= t; s++) total = f32(total + (probs[row + s] = f32(Math.exp(f32(probs[row + s] - top)))));
      for (let s = first; s <= t; s++) probs[row + s] = f32(probs[row + s] / total);
      for (let s = first; s <= t; s++) {
        const p = probs[row + s];
        for (let d = 0; d < HS; d++) y[t * C + h * HS + d] = f32(y[t * C + h * HS + d] + f32(p * v[s * C + h * HS + d]));
      }
    }
  }
  return {y, probs};
}

// softmax: d_att = p * (d_p - sum_s(d_p_s p_s)) * scale; masked entries have p = 0 and get no gradient.
// The gradient reaches every earlier position's key and value: dk[s] += d_att[t, s] q[t], dv[s] += p[t, s] dy[t]
function attentionBackward(dy, q, k, v, probs, T, cfg, scale) {
  const C = cfg.n_embd, NH = cfg.n_head, HS = C / NH;
  const dq = new Float32Array(T * C), dk = new Float32Array(T * C), dv = new Float32Array(T * C);
  const dprobs = new Float32Array(T);
  for (let h = 0; h < NH; h++) {
    for (let t = 0; t < T; t++) {
      const first = cfg.attention === 'self' ? t : 0, row = (h * T + t) * T;
      let weighted = 0;
      for (let s = first; s <= t; s++) {
        let acc = 0;
        for (let d = 0; d < HS; d++) acc = f32(acc + f32(dy[t * C + h * HS + d] * v[s * C + h * HS + d]));
        dprobs[s] = acc;
        weighted = f32(weighted + f32(acc * probs[row + s]));
      }
      for (let s = first; s <= t; s++) {
        const p = probs[row + s], datt = f32(f32(p * f32(dprobs[s] - weighted)) * scale);
        for (let d = 0; d < HS; d++) {
          const i = h * HS + d;
          dq[t * C + i] = f32(dq[t * C + i] + f32(datt * k[s * C + i]));
          dk[s * C + i] = f32(dk[s * C + i] + f32(datt * q[t * C + i]));
          dv[s * C + i] = f32(dv[s * C + i] + f32(p * dy[t * C + i]));
        }
      }
    }
  }
  return {dq, dk, dv};
}

function addInto(a, b) {  // a += b, float32
  for (let i = 0; i < a.length; i++) a[i] = f32(a[i] + b[i]);
  return a;
}

// The loss of one document [BOS, c1, ..., BOS]: predict tokens 1..n from 0..n-1, n = min(block_size, len - 1);
// the mean of -log p(target). Fills grads (a flat (P,) buffer, zeroed here) with d loss / d parameters.
function lossAndGrads(spec, flat, grads, tokens) {
  const cfg = spec.cfg, C = cfg.n_embd, V = cfg.vocab_size, eps = f32(spec.rmsnorm_eps);
  const scale = f32(spec.attn_scale);
  const T = Math.min(cfg.block_size, tokens.length - 1);
  if (T < 1) throw new Error('a document needs at least 2 tokens');
  const w = parameterViews(spec.table, flat), g = parameterViews(spec.table, grads);
  grads.fill(0);

  // ---- forward
  let x = new Float32Array(T * C);                                              // (T, C)
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < C; i++) x[t * C + i] = f32(w.wte[tokens[t] * C + i] + w.wpe[t * C + i]);
  }
  let embedNorm = null;
  if (cfg.norm === 'microgpt') { embedNorm = rmsnormRows(x, T, C, eps); x = embedNorm.out; }
  const caches = [];
  for (let l = 0; l < cfg.n_layer; l++) {
    const p = 'layer' + l + '.';
    const norm1 = cfg.norm !== 'none' ? rmsnormRows(x, T, C, eps) : null;
    const xn = norm1 ? norm1.out : x;                                           // (T, C)
    const q = linear(xn, w[p + 'attn_wq'], T);                                  // (T, C)
    const k = linear(xn, w[p + 'attn_wk'], T);                                  // (T, C)
    const v = linear(xn, w[p + 'attn_wv'], T);                                  // (T, C)
    const attn = attentionForward(q, k, v, T, cfg, scale);                      // y (T, C), probs (NH, T, T)
    x = addInto(linear(attn.y, w[p + 'attn_wo'], T), x);                        // (T, C) residual
    const norm2 = cfg.norm === 'microgpt' ? rmsnormRows(x, T, C, eps) : null;
    const xn2 = norm2 ? norm2.out : x;                                          // (T, C)
    const h = linear(xn2, w[p + 'mlp_fc1'], T);                                 // (T, H) pre-activation
    const a = h.map(z => (z > 0 ? (cfg.mlp_activation === 'relu2' ? f32(z * z) : z) : 0));  // (T, H)
    x = addInto(linear(a, w[p + 'mlp_fc2'], T), x);                             // (T, C) residual
    caches.push({norm1, xn, q, k, v, attn, norm2, xn2, h, a});
  }
  const lmHead = cfg.tie_lm_head ? 'wte' : 'lm_head';
  const logits = linear(x, w[lmHead], T);                                       // (T, V)

  // cross-entropy, each position weighted 1/T (the numpy engine's loss weights): loss = sum_t (log sumexp - logit[target]) / T;
  // softmax followed by NLL: d_logits = (softmax - onehot(target)) / T
  let loss = 0;
  const weight = f32(1 / T);
  const dlogits = new Float32Array(T * V);                                      // (T, V)
  for (let t = 0; t < T; t++) {
    const row = logits.subarray(t * V, (t + 1) * V);
    let top = -Infinity;
    for (let j = 0; j < V; j++) top = Math.max(top, row[j]);
    let sumexp = 0;
    for (let j = 0; j < V; j++) sumexp = f32(sumexp + (dlogits[t * V + j] = f32(Math.exp(f32(row[j] - top)))));
    const target = tokens[t + 1];
    loss = f32(loss + f32(f32(f32(Math.log(sumexp)) - f32(row[target] - top)) * weight));
    for (let j = 0; j < V; j++) dlogits[t * V + j] = f32(dlogits[t * V + j] * f32(weight / sumexp));
    dlogits[t * V + target] = f32(dlogits[t * V + target] - weight);
  }

  // ---- backward: each step's backward in reverse order
  let dx = linearBackward(dlogits, x, w[lmHead], g[lmHead], T);                 // (T, C)
  for (let l = cfg.n_layer - 1; l >= 0; l--) {
    const p = 'layer' + l + '.', c = caches[l];
    // mlp block: x_out = act(xn2 @ fc1.T) @ fc2.T + x_mid
    const da = linearBackward(dx, c.a, w[p + 'mlp_fc2'], g[p + 'mlp_fc2'], T);  // (T, H)
    for (let i = 0; i < da.length; i++) {  // relu: dh = da (h > 0); relu2: dh = da * 2 relu(h)
      da[i] = c.h[i] > 0 ? (cfg.mlp_activation === 'relu2' ? f32(da[i] * f32(2 * c.h[i])) : da[i]) : 0;
    }
    const dxn2 = linearBackward(da, c.xn2, w[p + 'mlp_fc1'], g[p + 'mlp_fc1'], T);  // (T, C)
    addInto(dx, c.norm2 ? rmsnormRowsBackward(dxn2, c.norm2, T, C) : dxn2);
    // attention block: x_mid = attn(xn @ [wq; wk; wv].T) @ wo.T + x_in
    const dy = linearBackward(dx, c.attn.y, w[p + 'attn_wo'], g[p + 'attn_wo'], T);  // (T, C)
    const {dq, dk, dv} = attentionBackward(dy, c.q, c.k, c.v, c.attn.probs, T, cfg, scale);
    const dxn = linearBackward(dq, c.xn, w[p + 'attn_wq'], g[p + 'attn_wq'], T);  // (T, C)
    addInto(dxn, linearBackward(dk, c.xn, w[p + 'attn_wk'], g[p + 'attn_wk'], T));
    addInto(dxn, linearBackward(dv, c.xn, w[p + 'attn_wv'], g[p + 'attn_wv'], T));
    addInto(dx, c.norm1 ? rmsnormRowsBackward(dxn, c.norm1, T, C) : dxn);
  }
  if (embedNorm) dx = rmsnormRowsBackward(dx, embedNorm, T, C);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < C; i++) {
      g.wpe[t * C + i] = f32(g.wpe[t * C + i] + dx[t * C + i]);
      g.wte[tokens[t] * C + i] = f32(g.wte[tokens[t] * C + i] + dx[t * C + i]);
    }
  }
  return loss;
}

// ---- Adam, microgpt's update: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) (engines/numpy multiplies by the corrections' inverses)

function adamUpdate(flat, grads, m, v, lr, train, t) {
  const b1 = f32(train.beta1), b2 = f32(train.beta2), oneMinusB1 = f32(1 - train.beta1), oneMinusB2 = f32(1 - train.beta2);
  const c1 = f32(1 - train.beta1 ** t), c2 = f32(1 - train.beta2 ** t), eps = f32(train.eps), lr32 = f32(lr);
  for (let i = 0; i < flat.length; i++) {
    const gi = grads[i];
    m[i] = f32(f32(m[i] * b1) + f32(gi * oneMinusB1));
    v[i] = f32(f32(v[i] * b2) + f32(f32(gi * gi) * oneMinusB2));
    const mHat = f32(m[i] / c1), vHat = f32(v[i] / c2);
    flat[i] = f32(flat[i] - f32(f32(mHat * lr32) / f32(f32(Math.sqrt(vHat)) + eps)));
  }
}

// config.learning_rate for microgpt's schedule: linear decay to 0 at `steps`
function learningRate(train, step) {
  return train.lr * (1 - step / train.steps);
}
