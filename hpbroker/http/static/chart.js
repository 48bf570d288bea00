// A small line chart on a <canvas>: no library, no build step.
// lineChart(canvas, series, opts): series = [{label, color, values: [numbers or null]}], one x step per sample.
// The canvas keeps the numbers it drew in data-points / data-last (the browser test reads them).
"use strict";
function lineChart(canvas, series, opts) {
  opts = opts || {};
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, padL = 52, padB = 16, padT = 8, padR = 8;
  ctx.clearRect(0, 0, w, h);
  let max = 0, n = 0;
  for (const s of series) {
    n = Math.max(n, s.values.length);
    for (const v of s.values) if (v != null && v > max) max = v;
  }
  max = max > 0 ? niceCeil(max) : 1;
  ctx.strokeStyle = "#dfe3e8"; ctx.fillStyle = "#6b7380"; ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = padT + (h - padT - padB) * i / 4;
    ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(w - padR, y); ctx.stroke();
    ctx.fillText(fmt(max * (4 - i) / 4) + (opts.unit || ""), 2, y + 4);
  }
  const x = i => padL + (w - padL - padR) * (n <= 1 ? 1 : i / (n - 1));
  const y = v => padT + (h - padT - padB) * (1 - v / max);
  series.forEach((s, k) => {
    ctx.strokeStyle = s.color; ctx.lineWidth = 2; ctx.beginPath();
    let pen = false;
    s.values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      if (pen) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
      pen = true;
    });
    ctx.stroke();
    ctx.fillStyle = s.color; ctx.fillText(s.label, padL + 6 + k * 110, h - 3);
  });
  const last = series.length && series[0].values.length ? series[0].values[series[0].values.length - 1] : null;
  canvas.dataset.points = String(n);
  canvas.dataset.last = last == null ? "" : String(last);
  canvas.dataset.max = String(Math.max(0, ...series.flatMap(s => s.values.filter(v => v != null))));
}
function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}
function fmt(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return a >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(2);
}
