/* sampling.js: turning the page's logits into names, as src/microgpt/sampling.py does, and the random stream it
 * draws from, CPython's random.Random, so that a seed gives the names `microgpt sample` would draw from the same
 * logits (tests/test_export_web.py checks them against sampling.generate with random.Random).
 *
 * tokenProbabilities and draw are sampling.py on doubles: temperature, top-k, top-p, and random.choices' draw;
 * PythonRandom is MT19937 seeded from an int as random.seed seeds it, with random, gauss and shuffle.
 * The page loads it after microgpt.js; it needs only a decoder's step(token, pos) -> logits.
 */
'use strict';

// ---- sampling: src/microgpt/sampling.py on doubles

function tokenProbabilities(logits, temperature, topK, topP) {
  const inverseTemperature = 1 / temperature;
  const scaled = Array.from(logits, logit => logit * inverseTemperature);
  const maxVal = Math.max(...scaled);
  const exps = scaled.map(s => Math.exp(s + (-maxVal)));
  let total = 0;
  for (const e of exps) total = total + e;  // left to right, as sampling.py sums
  const inverseTotal = 1 / total;
  let probs = exps.map(e => e * inverseTotal);
  if (topK || topP < 1) {
    // keep the top_k most likely tokens, then the smallest set whose mass reaches top_p (a stable sort, as Python's)
    let ranked = probs.map((_, i) => i).sort((a, b) => probs[b] - probs[a]);
    if (topK) ranked = ranked.slice(0, topK);
    if (topP < 1) {
      const kept = [];
      let mass = 0;
      for (const i of ranked) {
        kept.push(i);
        mass += probs[i];
        if (mass >= topP) break;
      }
      ranked = kept;
    }
    const keep = new Set(ranked);
    probs = probs.map((p, i) => (keep.has(i) ? p : 0));
  }
  return probs;
}

// random.choices(range(V), weights=probs)[0]: cumulative weights, then bisect_right(cum, random() * total, 0, V - 1)
function draw(probs, rng) {
  const cumulative = [];
  let sum = 0;
  for (const p of probs) cumulative.push(sum = sum + p);
  const u = rng.random() * (cumulative[cumulative.length - 1] + 0);
  let lo = 0, hi = probs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (u < cumulative[mid]) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// one sample, as sampling.generate: from BOS, stop at BOS or after block_size tokens; each step keeps the
// distribution it drew from, for the page's step-through
function generate(decoder, rng, temperature, topK, topP) {
  const cfg = decoder.cfg, steps = [];
  decoder.reset();
  let token = cfg.bos_id;
  for (let pos = 0; pos < cfg.block_size; pos++) {
    const probs = tokenProbabilities(decoder.step(token, pos), temperature, topK, topP);
    token = draw(probs, rng);
    steps.push({probs, token});
    if (token === cfg.bos_id) break;
  }
  return steps;
}

// ---- CPython's random.Random: MT19937 (genrand_uint32), seeded as random.seed(int) seeds it

class PythonRandom {
  constructor(seed) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new Error('seed must be a whole number >= 0');
    const key = [];  // the seed's 32-bit words, least significant first ([0] for 0), as random_seed splits an int
    for (let n = seed; n > 0 || key.length === 0; n = Math.floor(n / 4294967296)) key.push(n % 4294967296);
    this.mt = new Uint32Array(624);
    this.index = 624;
    this.gaussNext = null;
    this.initGenrand(19650218);
    const mt = this.mt;
    let i = 1, j = 0;
    for (let k = Math.max(624, key.length); k > 0; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1664525)) + key[j] + j) >>> 0;
      i++; j++;
      if (i >= 624) { mt[0] = mt[623]; i = 1; }
      if (j >= key.length) j = 0;
    }
    for (let k = 623; k > 0; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1566083941)) - i) >>> 0;
      i++;
      if (i >= 624) { mt[0] = mt[623]; i = 1; }
    }
    mt[0] = 0x80000000;
  }

  initGenrand(s) {
    const mt = this.mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < 624; i++) mt[i] = (Math.imul(1812433253, mt[i - 1] ^ (mt[i - 1] >>> 30)) + i) >>> 0;
  }

  uint32() {
    const mt = this.mt;
    if (this.index >= 624) {
      for (let k = 0; k < 624; k++) {
        const y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7fffffff);
        mt[k] = mt[(k + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.index = 0;
    }
    let y = mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  random() {  // 53 random bits: (a * 2^26 + b) / 2^53
    const a = this.uint32() >>> 5, b = this.uint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  gauss(mu, sigma) {  // random.gauss: Box-Muller, the second value kept for the next call
    let z = this.gaussNext;
    this.gaussNext = null;
    if (z === null) {
      const x2pi = this.random() * (2 * Math.PI);
      const g2rad = Math.sqrt(-2 * Math.log(1 - this.random()));
      z = Math.cos(x2pi) * g2rad;
      this.gaussNext = Math.sin(x2pi) * g2rad;
    }
    return mu + z * sigma;
  }

  randbelow(n) {  // _randbelow_with_getrandbits: getrandbits(n.bit_length()) until it is below n
    const k = 32 - Math.clz32(n);
    let r = this.uint32() >>> (32 - k);
    while (r >= n) r = this.uint32() >>> (32 - k);
    return r;
  }

  shuffle(items) {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.randbelow(i + 1);
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }
}
