// Small SVG charts for the dashboard: a line chart over time, grouped bars, a sparkline.
//
// No library and no build step. Every text (feature names, category values) reaches the
// SVG through textContent, never as markup; colours and sizes are SVG attributes and CSS
// classes, since the page's Content-Security-Policy allows no inline style.

const SVG = 'http://www.w3.org/2000/svg';
export const PALETTE = ['#2563eb', '#dc2626', '#d97706', '#16a34a', '#7c3aed', '#0891b2', '#475569'];

function node(tag, attributes = {}, parent = null) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) element.setAttribute(name, String(value));
  }
  if (parent) parent.append(element);
  return element;
}

function label(parent, x, y, content, attributes = {}) {
  const element = node('text', { x, y, ...attributes }, parent);
  element.textContent = content;
  return element;
}

function tooltip(parent, content) {
  node('title', {}, parent).textContent = content;
}

function shorten(text, length) {
  const value = String(text);
  return value.length > length ? `${value.slice(0, length - 1)}…` : value;
}

function canvas(container, height) {
  container.replaceChildren();
  const width = Math.max(280, Math.round(container.clientWidth || 640));
  const svg = node('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img' });
  container.append(svg);
  return { svg, width, height };
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  const nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10;
  return nice * power;
}

function ticks(maximum, count = 4) {
  const step = niceStep(maximum || 1, count);
  const top = Math.max(step, Math.ceil((maximum || 1) / step - 1e-9) * step);
  const values = [];
  for (let value = 0; value <= top + step / 2; value += step) values.push(value);
  return { top, values, step };
}

function formatNumber(value, step) {
  const digits = Math.max(0, Math.min(4, -Math.floor(Math.log10(step || 1))));
  return value.toFixed(digits);
}

function clock(seconds) {
  return new Date(seconds * 1000).toISOString().slice(11, 19);
}

function message(svg, width, height, text) {
  label(svg, width / 2, height / 2, text, { class: 'message', 'text-anchor': 'middle' });
}

function legend(svg, entries, x, y, width) {
  const group = node('g', { class: 'legend' }, svg);
  let left = x;
  let top = y;
  for (const entry of entries) {
    const text = shorten(entry.name, 34);
    const span = 22 + text.length * 6.4 + 14;
    if (left + span > x + width && left > x) {
      left = x;
      top += 16;
    }
    const item = node('g', {}, group);
    tooltip(item, entry.name);
    if (entry.className) {
      node('rect', { x: left, y: top - 8, width: 14, height: 9, rx: 2, class: entry.className }, item);
    } else {
      node('line', {
        x1: left, x2: left + 14, y1: top - 4, y2: top - 4, stroke: entry.color, 'stroke-width': 2.5,
        'stroke-dasharray': entry.dashed ? '4 3' : null,
      }, item);
    }
    label(item, left + 20, top, text);
    left += span;
  }
  return top;
}

/**
 * A line chart of values over time. `times` are seconds since the epoch (UTC);
 * `series` is [{ name, values (numbers or null for a gap), color?, dashed? }];
 * `threshold` draws a dashed reference line.
 */
export function lineChart(container, { times, series, threshold = null, height = 240 }) {
  const { svg, width } = canvas(container, height);
  const finite = series.flatMap((s) => s.values).filter((v) => typeof v === 'number' && Number.isFinite(v));
  if (times.length === 0 || finite.length === 0) {
    message(svg, width, height, 'No measures in this window');
    return svg;
  }
  const entries = series.map((s, i) => ({ ...s, color: s.color ?? PALETTE[i % PALETTE.length] }));
  const legendBottom = legend(svg, entries, 48, 14, width - 60);
  const margin = { left: 48, right: 16, top: legendBottom + 14, bottom: 24 };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const maximum = Math.max(...finite, threshold ?? 0) * 1.1;
  const scaleY = ticks(maximum);
  const first = times[0];
  const last = times[times.length - 1];
  const x = (t) => margin.left + (last === first ? plotWidth / 2 : ((t - first) / (last - first)) * plotWidth);
  const y = (v) => margin.top + plotHeight - (v / scaleY.top) * plotHeight;

  const axis = node('g', { class: 'axis' }, svg);
  for (const value of scaleY.values) {
    node('line', { x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value), class: 'grid-line' }, axis);
    label(axis, margin.left - 6, y(value) + 4, formatNumber(value, scaleY.step), { 'text-anchor': 'end' });
  }
  node('line', { x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0), class: 'axis-line' }, axis);
  const step = Math.max(1, Math.ceil(times.length / Math.max(1, Math.floor(plotWidth / 80))));
  for (let index = 0; index < times.length; index += step) {
    label(axis, x(times[index]), height - 6, clock(times[index]), { 'text-anchor': 'middle' });
  }
  if (threshold !== null && threshold !== undefined) {
    node('line', { x1: margin.left, x2: width - margin.right, y1: y(threshold), y2: y(threshold), class: 'threshold' }, svg);
    label(svg, width - margin.right, y(threshold) - 4, `threshold ${threshold}`, { class: 'threshold-label', 'text-anchor': 'end' });
  }
  for (const entry of entries) {
    const group = node('g', { class: 'series-group' }, svg);
    tooltip(group, entry.name);
    // The line first, so that its points stay on top of it.
    const line = node('path', {
      class: 'series', stroke: entry.color, 'stroke-dasharray': entry.dashed ? '6 4' : null,
    }, group);
    let path = '';
    let pen = false;
    entry.values.forEach((value, i) => {
      if (typeof value !== 'number' || !Number.isFinite(value)) {
        pen = false;
        return;
      }
      path += `${pen ? 'L' : 'M'}${x(times[i]).toFixed(1)},${y(value).toFixed(1)}`;
      pen = true;
      const point = node('circle', { cx: x(times[i]), cy: y(value), r: 2.6, fill: entry.color }, group);
      tooltip(point, `${entry.name}: ${value.toFixed(4)} at ${clock(times[i])} UTC`);
    });
    line.setAttribute('d', path);
  }
  return svg;
}

/**
 * Grouped bars: `labels` along the x axis, `groups` [{ name, values, className }]. With
 * `normalize` each group is drawn as shares of its own total (histograms of different
 * sizes side by side); otherwise as the values themselves.
 */
export function barChart(container, {
  labels, groups, height = 240, normalize = true, threshold = null, tick = null,
}) {
  const { svg, width } = canvas(container, height);
  const shown = groups.map((group) => {
    const total = group.values.reduce((sum, v) => sum + (Number.isFinite(v) ? v : 0), 0);
    const values = group.values.map((v) => (Number.isFinite(v) ? v : 0));
    return { ...group, values: normalize ? values.map((v) => (total > 0 ? v / total : 0)) : values };
  });
  const finite = shown.flatMap((g) => g.values);
  if (labels.length === 0 || finite.length === 0) {
    message(svg, width, height, 'No values');
    return svg;
  }
  const legendBottom = groups.length > 1 ? legend(svg, groups, 48, 14, width - 60) : 0;
  // `tick(label, index)` names the axis ticks (null: none there); the full label stays in
  // each bar's tooltip.
  const tickText = labels.map((name, i) => (tick ? tick(name, i) : String(name)));
  const widest = Math.max(...tickText.map((t) => (t === null ? 0 : t.length)));
  const named = Math.max(1, tickText.filter((t) => t !== null).length);
  const fits = (width - 60) / named > widest * 6.6 + 6;
  const rotate = !fits;
  const margin = { left: 48, right: 12, top: legendBottom + 14, bottom: rotate ? 74 : 26 };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const scaleY = ticks(Math.max(...finite, threshold ?? 0) * 1.08);
  const y = (v) => margin.top + plotHeight - (v / scaleY.top) * plotHeight;
  const slot = plotWidth / labels.length;
  const barWidth = Math.max(1.5, (slot * 0.78) / groups.length);

  const axis = node('g', { class: 'axis' }, svg);
  for (const value of scaleY.values) {
    node('line', { x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value), class: 'grid-line' }, axis);
    const text = normalize ? `${(value * 100).toFixed(scaleY.step < 0.01 ? 1 : 0)}%` : formatNumber(value, scaleY.step);
    label(axis, margin.left - 6, y(value) + 4, text, { 'text-anchor': 'end' });
  }
  node('line', { x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0), class: 'axis-line' }, axis);
  const every = Math.max(1, Math.ceil(labels.length / Math.max(1, Math.floor(plotWidth / (rotate ? 16 : widest * 6.6 + 6)))));
  labels.forEach((name, i) => {
    const center = margin.left + slot * (i + 0.5);
    shown.forEach((group, g) => {
      const value = group.values[i];
      const left = center - (barWidth * groups.length) / 2 + g * barWidth;
      const bar = node('rect', {
        x: left.toFixed(1), y: y(value).toFixed(1), width: Math.max(1, barWidth - 1).toFixed(1),
        height: Math.max(0, y(0) - y(value)).toFixed(1), class: group.className ?? 'bar-current',
      }, svg);
      const shownValue = normalize ? `${(value * 100).toFixed(1)} %` : value.toFixed(4);
      tooltip(bar, `${name}: ${group.name} ${shownValue}`);
    });
    if (tickText[i] !== null && (tick || i % every === 0)) {
      const text = shorten(tickText[i], 16);
      const attributes = rotate
        ? { 'text-anchor': 'end', transform: `rotate(-38 ${center.toFixed(1)} ${(y(0) + 12).toFixed(1)})` }
        : { 'text-anchor': 'middle' };
      const group = node('g', {}, axis);
      tooltip(group, String(name)); // beside the text, not in it: its textContent stays the label
      label(group, center.toFixed(1), (y(0) + 14).toFixed(1), text, { ...attributes, class: 'tick-label' });
    }
  });
  if (threshold !== null && threshold !== undefined) {
    node('line', { x1: margin.left, x2: width - margin.right, y1: y(threshold), y2: y(threshold), class: 'threshold' }, svg);
    label(svg, width - margin.right, y(threshold) - 4, `threshold ${threshold}`, { class: 'threshold-label', 'text-anchor': 'end' });
  }
  return svg;
}

/** A tiny line of `values` (null for a gap) with a dashed threshold. */
export function sparkline(container, values, threshold = null) {
  container.replaceChildren();
  const width = 112;
  const height = 26;
  const svg = node('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
  container.append(svg);
  const finite = values.filter((v) => typeof v === 'number' && Number.isFinite(v));
  if (finite.length === 0) return svg;
  const top = Math.max(...finite, threshold ?? 0) * 1.1 || 1;
  const x = (i) => (values.length === 1 ? width / 2 : 2 + (i / (values.length - 1)) * (width - 4));
  const y = (v) => height - 2 - (v / top) * (height - 4);
  if (threshold !== null) node('line', { x1: 0, x2: width, y1: y(threshold), y2: y(threshold), class: 'threshold' }, svg);
  let path = '';
  let pen = false;
  values.forEach((value, i) => {
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      pen = false;
      return;
    }
    path += `${pen ? 'L' : 'M'}${x(i).toFixed(1)},${y(value).toFixed(1)}`;
    pen = true;
  });
  node('path', { d: path, class: 'series' }, svg);
  if (finite.length === 1) {
    const index = values.findIndex((v) => typeof v === 'number' && Number.isFinite(v));
    node('circle', { cx: x(index), cy: y(values[index]), r: 2 }, svg);
  }
  tooltip(svg, `latest ${finite[finite.length - 1].toFixed(3)}, highest ${Math.max(...finite).toFixed(3)}`);
  return svg;
}

const redraws = new Set();
let pending = null;

/** Call `draw` now and again whenever the window is resized (charts fit their panel). */
export function responsive(draw) {
  redraws.add(draw);
  draw();
}

window.addEventListener('resize', () => {
  clearTimeout(pending);
  pending = setTimeout(() => redraws.forEach((draw) => draw()), 150);
});
