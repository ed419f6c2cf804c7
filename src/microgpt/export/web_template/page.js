/* page.js: the exported page's interface. The model is microgpt.js, the sampler sampling.js, the pictures
 * charts.js; the data (configuration, the parameter table, the weights as base64 float32, the vocabulary, the
 * run's metrics, the training documents) is the JSON that `microgpt export --web` wrote into
 * <script id="microgpt-data">.
 *
 * window.microgpt is the page's test hook (tests/test_export_web.py drives it from a real browser).
 */
'use strict';

const DATA = JSON.parse(document.getElementById('microgpt-data').textContent);
const $ = id => document.getElementById(id);
const TOP_BARS = 10;

// the weights: little-endian float32, base64, in the parameter table's flat order
function decodeWeights(base64) {
  const bytes = Uint8Array.from(atob(base64), ch => ch.charCodeAt(0));
  const view = new DataView(bytes.buffer), flat = new Float32Array(bytes.length / 4);  // (P,)
  for (let i = 0; i < flat.length; i++) flat[i] = view.getFloat32(4 * i, true);
  return flat;
}

// ---- the tokenizer: the checkpoint's characters (code points, not UTF-16 units), BOS has no text

const TOKENS = DATA.tokens;  // token id -> its character, null for BOS
const TOKEN_ID = new Map(TOKENS.map((ch, id) => [ch, id]).filter(([ch]) => ch !== null));
const VOCAB_TEXT = TOKENS.filter(ch => ch !== null).join('');

function tokenLabel(id) {
  const ch = TOKENS[id];
  return ch === null ? 'end' : ch === ' ' ? '\u2423' : ch;
}

function unknownChars(text) {
  return [...new Set(Array.from(text).filter(ch => !TOKEN_ID.has(ch)))];
}

function decodeTokens(ids) {
  return ids.filter(id => TOKENS[id] !== null).map(id => TOKENS[id]).join('');
}

function documentTokens(doc, bos) {
  return [bos, ...Array.from(doc, ch => TOKEN_ID.get(ch)), bos];
}

// ---- the model the page explores: the checkpoint's, or the one trained here

let model = {spec: DATA.spec, flat: decodeWeights(DATA.weights), label: DATA.title};
let decoder = new Decoder(model.spec, model.flat);

function setModel(spec, flat, label) {
  model = {spec, flat, label};
  decoder = new Decoder(spec, flat);
  $('title').textContent = label;
  updatePrefix();
  sampleNames();
}

// ---- bars of a distribution

function renderBars(list, probs, chosen) {
  const ranked = probs.map((p, id) => id).sort((a, b) => probs[b] - probs[a]);
  const shown = ranked.slice(0, TOP_BARS).filter(id => probs[id] > 0);  // top-k and top-p leave zeros out
  if (chosen !== undefined && !shown.includes(chosen)) shown.push(chosen);
  list.replaceChildren(...shown.map(id => {
    const li = document.createElement('li');
    li.dataset.token = id;
    li.dataset.prob = probs[id];
    if (id === chosen) li.className = 'chosen';
    const percent = (100 * probs[id]).toFixed(1) + '%';
    li.setAttribute('aria-label', `${tokenLabel(id)}: ${percent}${id === chosen ? ' (drawn)' : ''}`);
    li.innerHTML = '<span class="tok"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>';
    li.querySelector('.tok').textContent = tokenLabel(id);
    li.querySelector('.fill').style.width = (100 * probs[id] / probs[ranked[0]]).toFixed(2) + '%';
    li.querySelector('.pct').textContent = percent;
    return li;
  }));
}

// ---- next character, and the attention of the text typed

function feed(ids) {  // BOS, then ids; returns the logits after the last one
  const bos = model.spec.cfg.bos_id;
  decoder.reset();
  let logits = decoder.step(bos, 0);
  ids.forEach((id, i) => { logits = decoder.step(id, i + 1); });
  return logits;
}

function updatePrefix() {
  const text = $('prefix').value, cfg = model.spec.cfg;
  const unknown = unknownChars(text);
  let chars = Array.from(text).filter(ch => TOKEN_ID.has(ch));
  const notes = [];
  if (unknown.length) {
    notes.push(`${unknown.map(ch => JSON.stringify(ch)).join(', ')} ${unknown.length > 1 ? 'are' : 'is'} not in the ` +
               `model's vocabulary, so ${unknown.length > 1 ? 'they are' : 'it is'} left out; it knows ${JSON.stringify(VOCAB_TEXT)}`);
  }
  if (chars.length > cfg.block_size - 1) {
    notes.push(`the model reads ${cfg.block_size - 1} characters after the start; only the first ${cfg.block_size - 1} are used`);
    chars = chars.slice(0, cfg.block_size - 1);
  }
  $('prefix-note').textContent = notes.join('; ');
  const probs = tokenProbabilities(feed(chars.map(ch => TOKEN_ID.get(ch))), 1, 0, 1);
  $('prefix-caption').textContent = `After "${chars.join('')}" (temperature 1); "end" ends the name:`;
  renderBars($('next-bars'), probs);
  drawHeatmaps($('heatmaps'), decoder.attention, ['start', ...chars]);
}

// ---- sampling, and stepping through a sample

function readNumber(id, {min, max, integer}) {
  const el = $(id), value = Number(el.value), name = document.querySelector(`label[for="${id}"]`).textContent;
  if (el.value.trim() === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value)) ||
      value < min || (max !== undefined && value > max)) {
    throw new Error(`${name} must be ${integer ? 'a whole number' : 'a number'} ` +
                    (max !== undefined ? `from ${min} to ${max}` : `of at least ${min}`));
  }
  return value;
}

function sampleWith({temperature, topK, topP, seed, count}) {
  const rng = new PythonRandom(seed), samples = [];
  for (let i = 0; i < count; i++) {
    const steps = generate(decoder, rng, temperature, topK, topP);
    samples.push({steps, name: decodeTokens(steps.map(s => s.token))});
  }
  return samples;
}

let samples = [];

function sampleNames() {
  let settings;
  try {
    settings = {temperature: readNumber('temperature', {min: 0.01}), topK: readNumber('top-k', {min: 0, integer: true}),
                topP: readNumber('top-p', {min: 0.01, max: 1}), seed: readNumber('seed', {min: 0, max: 2 ** 53 - 1, integer: true}),
                count: readNumber('count', {min: 1, max: 200, integer: true})};
  } catch (error) {
    $('sample-note').textContent = error.message;
    return;
  }
  $('sample-note').textContent = '';
  samples = sampleWith(settings);
  $('samples').replaceChildren(...samples.map((sample, i) => {
    const li = document.createElement('li'), button = document.createElement('button');
    button.type = 'button';
    button.textContent = sample.name || '(empty)';
    button.setAttribute('aria-pressed', 'false');
    button.addEventListener('click', () => selectSample(i));
    li.append(button);
    return li;
  }));
  selectSample(0);
}

let selected = 0;

function selectSample(i) {
  selected = i;
  document.querySelectorAll('#samples button').forEach((b, j) => b.setAttribute('aria-pressed', String(j === i)));
  const slider = $('step-pos');
  slider.max = samples[i].steps.length - 1;
  slider.value = 0;
  $('stepper').hidden = false;
  showStep();
}

function showStep() {
  const steps = samples[selected].steps, pos = Number($('step-pos').value), word = $('stepper-word');
  word.replaceChildren();
  steps.forEach((s, i) => {
    const span = document.createElement(i === pos ? 'mark' : 'span');
    span.textContent = TOKENS[s.token] === null ? '\u00b6' : TOKENS[s.token];
    if (i <= pos) word.append(span);
  });
  $('step-pos').setAttribute('aria-valuetext', `character ${pos + 1} of ${steps.length}`);
  $('stepper-caption').textContent = `Character ${pos + 1} of ${steps.length} (\u00b6 = end): drawn "${tokenLabel(steps[pos].token)}" ` +
    `with probability ${(100 * steps[pos].probs[steps[pos].token]).toFixed(1)}%, from:`;
  renderBars($('step-bars'), steps[pos].probs, steps[pos].token);
}

function moveStep(delta) {
  const slider = $('step-pos');
  slider.value = Math.min(Number(slider.max), Math.max(0, Number(slider.value) + delta));
  showStep();
}

function showRun() {
  const rows = Object.entries(DATA.info).map(([key, value]) => {
    const dt = document.createElement('dt'), dd = document.createElement('dd');
    dt.textContent = key;
    dd.textContent = value;
    return [dt, dd];
  });
  $('run-info').replaceChildren(...rows.flat());
  if (!DATA.metrics) {
    $('loss-chart').hidden = true;
    $('loss-caption').textContent = 'No metrics.jsonl beside the checkpoint: no loss curves (train with --out DIR to record them).';
    return;
  }
  const {train, val, steps} = DATA.metrics, {series, window} = lossSeries(train, val);
  drawChart($('loss-chart'), series, steps);
  $('loss-caption').textContent = `Loss (nats per character) against step: training per step (light), its mean over ` +
    `${window} steps (blue)` + (val.length ? ', held-out (orange).' : '.');
}

// ---- training in a Web Worker

const WORKER_URL = URL.createObjectURL(new Blob(
  [$('microgpt-js').textContent, $('worker-js').textContent], {type: 'text/javascript'}));

function trainInWorker(spec, weights, documents, steps, onProgress) {
  const worker = new Worker(WORKER_URL);
  const done = new Promise((resolve, reject) => {
    worker.onmessage = event => {
      if (event.data.type === 'progress') onProgress(event.data);
      else { worker.terminate(); resolve(event.data); }
    };
    worker.onerror = error => { worker.terminate(); reject(new Error(error.message)); };
  });
  const train = {...DATA.train.config, steps};
  worker.postMessage({spec, weights, documents, train, reportEvery: Math.max(1, Math.floor(steps / 100))});
  return {worker, done};
}

// microgpt's order of the random stream: shuffle the documents, then draw the weights, then sample
function startTraining(seed, docs) {
  const rng = new PythonRandom(seed), order = rng.shuffle(docs.slice());
  return {rng, order, weights: initParameters(DATA.train.spec, rng)};
}

let running = null, trained = null;

function trainingDocuments() {
  if ($('docs-checkpoint').checked) return DATA.train.documents;
  return $('docs-text').value.split(/\r\n|\r|\n/).map(line => line.trim()).filter(line => line);
}

function train() {
  let seed, steps;
  const docs = trainingDocuments();
  try {
    seed = readNumber('train-seed', {min: 0, max: 2 ** 53 - 1, integer: true});
    steps = readNumber('train-steps', {min: 1, max: 1000000, integer: true});
    if (!docs.length) throw new Error('paste at least one document, one per line');
    const unknown = unknownChars(docs.join(''));
    if (unknown.length) throw new Error(`${unknown.map(ch => JSON.stringify(ch)).join(', ')} not in the model's vocabulary; ` +
                                        `use only ${JSON.stringify(VOCAB_TEXT)}`);
  } catch (error) {
    $('train-note').textContent = error.message;
    return;
  }
  $('train-note').textContent = '';
  // nothing of an earlier run stays on show: its status, its samples, its model to explore
  $('train-status').textContent = `step 0 / ${steps}`;
  $('train-samples').replaceChildren();
  trained = null;
  $('explore-button').disabled = true;
  const {rng, order, weights} = startTraining(seed, docs), bos = DATA.train.spec.cfg.bos_id;
  const losses = [];
  let drawPending = false;
  running = trainInWorker(DATA.train.spec, weights, order.map(doc => documentTokens(doc, bos)), steps, progress => {
    losses.push(...progress.losses);
    $('train-status').textContent = `step ${progress.step} / ${steps} | loss ${losses[losses.length - 1].toFixed(4)}`;
    if (!drawPending) {
      drawPending = true;
      requestAnimationFrame(() => { drawPending = false; drawChart($('train-chart'), lossSeries(losses.map((l, i) => [i + 1, l])).series, steps); });
    }
  });
  $('train-button').disabled = true;
  $('stop-button').disabled = false;
  running.done.then(result => {
    trained = {spec: DATA.train.spec, flat: result.weights};
    $('train-status').textContent = `trained ${steps} steps in ${(result.ms / 1000).toFixed(2)} s; last loss ${losses[losses.length - 1].toFixed(4)}. Samples (temperature 0.5):`;
    const trainedDecoder = new Decoder(trained.spec, trained.flat), names = [];
    for (let i = 0; i < 20; i++) names.push(decodeTokens(generate(trainedDecoder, rng, 0.5, 0, 1).map(s => s.token)));
    $('train-samples').replaceChildren(...names.map(name => Object.assign(document.createElement('li'), {textContent: name})));
    $('explore-button').disabled = false;
  }, error => { $('train-note').textContent = `training stopped: ${error.message}`; })
    .finally(() => { running = null; $('train-button').disabled = false; $('stop-button').disabled = true; });
}

function stopTraining() {
  if (!running) return;
  running.worker.terminate();
  $('train-status').textContent += ' (stopped)';
  running = null;
  $('train-button').disabled = false;
  $('stop-button').disabled = true;
}

// ---- wiring

$('title').textContent = DATA.title;
$('prefix').addEventListener('input', updatePrefix);
for (const id of ['temperature', 'top-k', 'top-p', 'seed', 'count']) $(id).addEventListener('change', sampleNames);
$('sample-button').addEventListener('click', sampleNames);
$('step-pos').addEventListener('input', showStep);
$('step-prev').addEventListener('click', () => moveStep(-1));
$('step-next').addEventListener('click', () => moveStep(1));
$('train-button').addEventListener('click', train);
$('stop-button').addEventListener('click', stopTraining);
$('explore-button').addEventListener('click', () => setModel(trained.spec, trained.flat, 'the model trained in this page'));
$('docs-text').addEventListener('input', () => { $('docs-pasted').checked = true; });
if (DATA.train.documents) {
  $('docs-checkpoint-label').textContent = `the checkpoint's training documents (${DATA.train.documents.length}, ${DATA.train.source})`;
} else {
  $('docs-checkpoint').disabled = true;
  $('docs-pasted').checked = true;
  $('docs-checkpoint-label').textContent = `the checkpoint's training documents (${DATA.train.source})`;
}
$('train-intro').textContent = `Trains microgpt's default model (${DATA.train.summary}) from a seed, as microgpt.py does: ` +
  `shuffle the documents, draw the weights, one document a step, Adam with the learning rate decaying to 0; then ` +
  `samples 20 names. It runs in a Web Worker, in float32.`;
updatePrefix();
sampleNames();
showRun();
window.addEventListener('resize', showRun);

window.microgpt = {
  logits: ids => Array.from(feed(ids)),
  sample: settings => sampleWith(settings).map(s => s.name),
  initTraining: (seed, docs) => { const {order, weights} = startTraining(seed, docs); return {order, weights: Array.from(weights)}; },
  // trains microgpt's default model (or, with checkpointModel, the checkpoint's) from the given weights on the
  // given documents (token ids) in the given order, with microgpt's optimiser
  trainWith: (weights, documents, steps, checkpointModel) => trainInWorker(
    checkpointModel ? DATA.spec : DATA.train.spec, Float32Array.from(weights), documents, steps, () => {}).done
    .then(result => ({losses: result.losses, ms: result.ms})),
};
