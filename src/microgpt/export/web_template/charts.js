/* charts.js: the page's pictures on <canvas>: loss curves against step, and attention heatmaps. No model here. */
'use strict';

// ---- loss against step

function drawChart(canvas, series, xMax) {
  const dpr = window.devicePixelRatio || 1, width = canvas.clientWidth || 600, height = canvas.clientHeight || 220;
  canvas.width = width * dpr;
  canvas.height = height * dpr;
  const ctx = canvas.getContext('2d');
  ctx.scale(dpr, dpr);
  const points = series.flatMap(s => s.points);
  if (!points.length) return;
  const left = 44, right = 22, top = 10, bottom = 26;
  const yMin = Math.min(...points.map(p => p[1])), yMax = Math.max(...points.map(p => p[1])), span = (yMax - yMin) || 1;
  const x = v => left + (width - left - right) * v / (xMax || 1), y = v => top + (height - top - bottom) * (yMax - v) / span;
  ctx.strokeStyle = '#d9dde5';
  ctx.fillStyle = '#5b6475';
  ctx.font = '11px system-ui, sans-serif';
  for (let i = 0; i <= 4; i++) {
    const value = yMin + span * i / 4;
    ctx.beginPath(); ctx.moveTo(left, y(value)); ctx.lineTo(width - right, y(value)); ctx.stroke();
    ctx.textAlign = 'right';
    ctx.fillText(value.toFixed(2), left - 4, y(value) + 4);
    ctx.textAlign = 'center';
    ctx.fillText(String(Math.round(xMax * i / 4)), x(xMax * i / 4), height - 8);
  }
  for (const s of series) {
    ctx.strokeStyle = ctx.fillStyle = s.color;
    ctx.globalAlpha = s.alpha || 1;
    ctx.lineWidth = s.width || 1.5;
    ctx.beginPath();
    s.points.forEach(([px, py], i) => (i ? ctx.lineTo(x(px), y(py)) : ctx.moveTo(x(px), y(py))));
    ctx.stroke();
    if (s.dots) s.points.forEach(([px, py]) => { ctx.beginPath(); ctx.arc(x(px), y(py), 3, 0, 2 * Math.PI); ctx.fill(); });
  }
  ctx.globalAlpha = 1;
}

function runningMean(points, window) {
  let sum = 0;
  return points.map(([step, loss], i) => {
    sum += loss - (i >= window ? points[i - window][1] : 0);
    return [step, sum / Math.min(i + 1, window)];
  });
}

function lossSeries(train, val) {
  const window = Math.max(1, Math.min(50, Math.floor(train.length / 10) || 1));
  const series = [{points: train, color: '#2f6fdf', alpha: 0.2, width: 1},
                  {points: runningMean(train, window), color: '#2f6fdf', width: 2}];
  if (val && val.length) series.push({points: val, color: '#e07a1f', width: 2, dots: true});
  return {series, window};
}

// ---- attention

// one canvas per layer and head: row t = the position that looks, column s = the position it looks at;
// attention[l][h][t] holds the probabilities of the positions t may see (all before it, or itself only)
function drawHeatmaps(container, attention, labels) {
  const n = labels.length, cell = Math.max(14, Math.min(26, Math.floor(220 / n))), margin = 38;
  const figures = [];
  attention.forEach((heads, l) => heads.forEach((rows, h) => {
    const figure = document.createElement('figure'), canvas = document.createElement('canvas');
    const size = margin + n * cell, dpr = window.devicePixelRatio || 1;
    canvas.width = canvas.height = size * dpr;
    canvas.style.width = canvas.style.height = size + 'px';
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', `attention of layer ${l}, head ${h}: ` + rows.map((att, t) =>
      `${labels[t]} looks most at ${labels[argmax(att) + (t + 1 - att.length)]}`).join('; '));
    const ctx = canvas.getContext('2d');
    ctx.scale(dpr, dpr);
    ctx.font = '11px ui-monospace, monospace';
    ctx.fillStyle = '#5b6475';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    labels.forEach((label, t) => {
      ctx.fillText(label === 'start' ? 'BOS' : label, margin - 4, margin + (t + 0.5) * cell);
      ctx.save();
      ctx.translate(margin + (t + 0.5) * cell, margin - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = 'left';
      ctx.fillText(label === 'start' ? 'BOS' : label, 0, 0);
      ctx.restore();
    });
    rows.forEach((att, t) => att.forEach((p, i) => {
      const s = t + 1 - att.length + i;  // the key position of att[i] (att covers the positions it may see)
      ctx.fillStyle = `rgba(47, 111, 223, ${Math.max(0.04, p)})`;
      ctx.fillRect(margin + s * cell, margin + t * cell, cell - 1, cell - 1);
    }));
    const caption = document.createElement('figcaption');
    caption.textContent = `layer ${l}, head ${h}`;
    figure.append(canvas, caption);
    figures.push(figure);
  }));
  container.replaceChildren(...figures);
}

function argmax(values) {
  return values.reduce((best, v, i) => (v > values[best] ? i : best), 0);
}
