// The dashboard's pages: charts drawn from the JSON API, and the confirmation dialogs of
// the rollout page. Loaded as a module by every page; each part runs only where its
// element is. Data reach the DOM through textContent and SVG attributes only.

import { barChart, lineChart, responsive, sparkline } from './charts.js';

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: 'application/json' } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ?? `GET ${url}: HTTP ${response.status}`);
  return body;
}

function say(container, text) {
  const note = document.createElement('p');
  note.className = 'empty';
  note.textContent = text;
  container.replaceChildren(note);
}

const middle = (bucket) => (bucket.start + bucket.end) / 2;

function largest(rows) {
  const values = rows.filter((v) => typeof v === 'number');
  return values.length ? Math.max(...values) : null;
}

// Score bins are 0.05 wide: name every fourth edge (0.0, 0.2, ...) on the axis.
const scoreTick = (_, index) => (index % 4 === 0 ? (index / 20).toFixed(1) : null);

function histogramGroups(histogram) {
  return [
    { name: 'training data (reference)', values: histogram.reference, className: 'bar-reference' },
    { name: 'reports (current)', values: histogram.current, className: 'bar-current' },
  ];
}

// -- overview: each version's largest drift over time ------------------------------------

async function overviewDrift(element) {
  const data = await getJSON(element.dataset.api);
  const timeline = data.timeline;
  if (!timeline.versions.length) {
    say(element, 'No report yet.');
  } else {
    const times = timeline.buckets.map(middle);
    const series = timeline.versions.map((v) => ({
      name: `${v.model_name} ${v.model_version}`, values: v.max_feature_js,
    }));
    responsive(() => lineChart(element, { times, series, threshold: timeline.thresholds.js, height: 210 }));
  }
  element.dataset.rendered = 'true';
}

// -- drift page ------------------------------------------------------------------------------

async function driftPage(app) {
  const data = await getJSON(app.dataset.api);
  if (data.error) {
    app.dataset.rendered = 'true';
    return;
  }
  const times = data.buckets.map(middle);
  const byDrift = data.features
    .map((feature, index) => ({ feature, index }))
    .sort((a, b) => (b.feature.js ?? -1) - (a.feature.js ?? -1));
  const top = byDrift.slice(0, 5);
  let metric = 'js';

  const timeline = document.getElementById('timeline-chart');
  const drawTimeline = () => {
    const series = top.map(({ feature }) => ({ name: feature.name, values: feature.timeline[metric] }));
    if (data.score) series.push({ name: 'score', values: data.score.timeline[metric], dashed: true });
    lineChart(timeline, { times, series, threshold: data.thresholds[metric] });
  };
  responsive(drawTimeline);
  for (const button of app.querySelectorAll('[data-metric]')) {
    button.addEventListener('click', () => {
      metric = button.dataset.metric;
      for (const other of app.querySelectorAll('[data-metric]')) {
        other.setAttribute('aria-pressed', String(other === button));
      }
      drawTimeline();
    });
  }

  const rows = document.querySelectorAll('#features tr[data-index]');
  for (const row of rows) {
    const feature = data.features[Number(row.dataset.index)];
    if (feature) sparkline(row.querySelector('.spark'), feature.timeline.js, data.thresholds.js);
  }

  const histogram = document.getElementById('histogram-chart');
  let drawHistogram = () => {};
  const select = (index) => {
    const feature = data.features[index];
    if (!feature) return;
    document.getElementById('histogram-title').textContent = feature.name;
    for (const row of rows) row.classList.toggle('selected', Number(row.dataset.index) === index);
    drawHistogram = () => barChart(histogram, { labels: feature.histogram.labels, groups: histogramGroups(feature.histogram) });
    drawHistogram();
    histogram.dataset.feature = String(index);
  };
  responsive(() => drawHistogram());
  for (const row of rows) {
    const index = Number(row.dataset.index);
    row.addEventListener('click', () => select(index));
    row.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        select(index);
      }
    });
  }
  if (byDrift.length) select(byDrift[0].index);

  const score = document.getElementById('score-chart');
  if (data.score) {
    responsive(() => barChart(score, { labels: data.score.labels, groups: histogramGroups(data.score), height: 200, tick: scoreTick }));
  } else {
    say(score, 'Nothing scored in this window.');
  }
  app.dataset.rendered = 'true';
}

// -- device page ---------------------------------------------------------------------------

async function devicePage(app) {
  const data = await getJSON(app.dataset.api);
  const score = document.getElementById('device-score-chart');
  const features = document.getElementById('device-features-chart');
  if (data.score) {
    responsive(() => barChart(score, { labels: data.score.labels, groups: histogramGroups(data.score), height: 200, tick: scoreTick }));
  } else {
    say(score, 'No measures for this device.');
  }
  if (data.features.length) {
    const labels = data.features.map((f) => f.name);
    const groups = [{ name: 'JS distance', values: data.features.map((f) => f.js ?? 0), className: 'bar-current' }];
    responsive(() => barChart(features, { labels, groups, normalize: false, threshold: data.thresholds.js, height: 230 }));
  } else {
    say(features, 'No measures for this device.');
  }
  app.dataset.rendered = 'true';
}

// -- rollouts: confirm before anything is posted --------------------------------------------

function dialogs() {
  for (const button of document.querySelectorAll('[data-opens]')) {
    button.addEventListener('click', () => {
      const dialog = document.getElementById(button.dataset.opens);
      dialog.querySelector('form').reset();
      dialog.showModal();
      dialog.querySelector('input[name="token"]')?.focus();
    });
  }
  for (const button of document.querySelectorAll('[data-closes]')) {
    button.addEventListener('click', () => button.closest('dialog').close('cancel'));
  }
  for (const form of document.querySelectorAll('dialog form')) {
    // One submission: a double click must not post twice.
    form.addEventListener('submit', () => {
      for (const submit of form.querySelectorAll('button[type="submit"]')) submit.disabled = true;
    });
  }
}

function run(selector, part) {
  const element = document.querySelector(selector);
  if (!element) return;
  part(element).catch((error) => {
    say(element, `Could not load the data: ${error.message}`);
    element.dataset.rendered = 'error';
    console.error(error);
  });
}

run('#overview-drift', overviewDrift);
run('#drift-app', driftPage);
run('#device-app', devicePage);
dialogs();
