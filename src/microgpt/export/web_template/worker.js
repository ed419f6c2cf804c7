/* worker.js: the Train button's Web Worker. It runs after microgpt.js (the page builds the worker from a blob
 * of both sources, since a page opened from file:// cannot load a worker script by URL), so the page stays
 * responsive while it trains.
 *
 * Message in:  {spec, weights (P,) Float32Array, documents: token-id arrays in training order, train: {steps, lr,
 *               beta1, beta2, eps}, reportEvery}
 * Messages out: {type: 'progress', step, losses}  the losses of the steps since the last report, sent every
 *                                                 reportEvery steps or REPORT_MS milliseconds, whichever is first
 *               {type: 'done', weights, losses, ms}  every loss, the trained weights, the milliseconds of training
 * Step s trains on documents[s % documents.length], as train.loop does with a batch of one.
 */
'use strict';

const REPORT_MS = 100;  // the live loss curve moves at least this often, however long a run

onmessage = event => {
  const {spec, weights, documents, train, reportEvery} = event.data;
  const flat = Float32Array.from(weights);
  const P = flat.length;
  const grads = new Float32Array(P), m = new Float32Array(P), v = new Float32Array(P);  // (P,) each
  const losses = [];
  const started = performance.now();
  let reported = 0, reportedAt = started;
  for (let step = 0; step < train.steps; step++) {
    losses.push(lossAndGrads(spec, flat, grads, documents[step % documents.length]));
    adamUpdate(flat, grads, m, v, learningRate(train, step), train, step + 1);
    const now = performance.now();
    if (step + 1 - reported >= reportEvery || now - reportedAt >= REPORT_MS || step + 1 === train.steps) {
      postMessage({type: 'progress', step: step + 1, losses: losses.slice(reported)});
      reported = step + 1;
      reportedAt = now;
    }
  }
  postMessage({type: 'done', weights: flat, losses, ms: performance.now() - started});
};
