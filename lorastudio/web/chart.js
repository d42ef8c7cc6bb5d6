// A small inline-SVG line chart for the loss curve; redrawn from the full series on each update
// (a few thousand points at most), sized to its box so text is never stretched.

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function niceTicks(min, max, count) {
  if (min === max) {
    const pad = Math.abs(min) * 0.1 || 1;
    min -= pad;
    max += pad;
  }
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const lo = Math.floor(min / step) * step;
  const hi = Math.ceil(max / step) * step;
  const ticks = [];
  for (let v = lo; v <= hi + step / 2; v += step) ticks.push(Number(v.toFixed(10)));
  return { lo, hi, ticks };
}

/**
 * series: [{name, points: [[x, y], ...], className}]; labels: {x, empty}.
 * Returns the number of points drawn.
 */
export function drawChart(svg, series, labels) {
  const box = svg.getBoundingClientRect();
  const width = Math.max(240, Math.round(box.width || 600));
  const height = Math.max(160, Math.round(box.height || 220));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();

  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (!all.length) return 0;

  const m = { left: 56, right: 12, top: 10, bottom: 30 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs, xMin + 1);
  const yt = niceTicks(Math.min(...ys), Math.max(...ys), 4);
  const sx = (x) => m.left + ((x - xMin) / (xMax - xMin)) * w;
  const sy = (y) => m.top + (1 - (y - yt.lo) / (yt.hi - yt.lo)) * h;

  const grid = el("g", { class: "grid" });
  // Enough decimals to tell neighbouring ticks apart (a flat loss of 11.90–11.93 needs three).
  const tickStep = yt.ticks.length > 1 ? yt.ticks[1] - yt.ticks[0] : 1;
  const mag = Math.floor(Math.log10(tickStep) + 1e-9);
  const decimals = Math.min(6, Math.max(0, -mag + (Math.abs(tickStep / 10 ** mag - 2.5) < 1e-6 ? 1 : 0)));
  for (const v of yt.ticks) {
    grid.append(el("line", { x1: m.left, x2: m.left + w, y1: sy(v), y2: sy(v) }));
    grid.append(el("text", { x: m.left - 6, y: sy(v) + 4, "text-anchor": "end", class: "tick" }, v.toFixed(decimals)));
  }
  const xTicks = niceTicks(xMin, xMax, Math.max(2, Math.min(6, Math.floor(w / 90)))).ticks
    .filter((v) => v >= xMin && v <= xMax && Number.isInteger(v));
  for (const v of xTicks) {
    grid.append(el("text", { x: sx(v), y: m.top + h + 18, "text-anchor": "middle", class: "tick" }, String(v)));
  }
  grid.append(el("text", { x: m.left + w, y: height - 2, "text-anchor": "end", class: "axis-label" }, labels.x));
  svg.append(grid);

  for (const s of series) {
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (!pts.length) continue;
    const d = pts.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
    svg.append(el("path", { d, class: `line ${s.className || ""}`, fill: "none" }));
    const [lx, ly] = pts[pts.length - 1];
    svg.append(el("circle", { cx: sx(lx), cy: sy(ly), r: 3, class: `dot ${s.className || ""}` }));
  }
  return all.length;
}
