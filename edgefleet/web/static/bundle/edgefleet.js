// edgefleet in the browser: load a model bundle, verify it, self-test it, score records.
//
// An ES module with no build step. It lives at /web/edgefleet.js of a bundle exported with
// the "web" format, beside ./ort/ (onnxruntime-web 1.30, WebAssembly only) and the model at
// the manifest's "web" artifact path.
//
//   const bundle = await loadBundle('../');   // fetch, check sha256, create the session
//   await selfTest(bundle);                    // golden vectors, or throw
//   const p = await score(bundle, [record]);   // [P(classes[1])] per record (binary models)
//   const [answer] = await predict(bundle, [record]);
//     // {label, probabilities: {class: p}} for a classifier, {value} for a regressor
//
// encodeRecord() is the Python policy of edgefleet/edge/encoding.py, rule for rule: a
// record scores the same in the browser as on a device, or fails with the same reason.

const ORT_DIR = new URL('./ort/', import.meta.url);
const PROBABILITIES = 'probabilities';
export const UNKNOWN_CODE = -1;
// A regressor's value agrees with scikit-learn's b within tolerance + REGRESSION_RTOL * |b|
// (edgefleet/edge/manifest.py, docs/architecture.md §2).
export const REGRESSION_RTOL = 1e-5;

/** The manifest schema's task: "binary" unless it says otherwise. */
export function taskOf(schema) {
  return schema.task ?? 'binary';
}

// ---------------------------------------------------------------- onnxruntime-web loading

let ortLoading = null;

/**
 * onnxruntime-web's `ort` namespace. ort.wasm.min.js is a classic script (an IIFE that
 * declares a top-level `var ort`), not an ES module: imported as a module it would run but
 * export nothing, and its `var` would stay module-scoped. So it is added as a <script>
 * element, once, and read from globalThis.
 */
export function loadOrt() {
  if (globalThis.ort) return Promise.resolve(globalThis.ort);
  ortLoading ??= new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = new URL('ort.wasm.min.js', ORT_DIR).href;
    script.onload = () => globalThis.ort
      ? resolve(globalThis.ort)
      : reject(new Error(`${script.src} loaded but did not define ort`));
    script.onerror = () => reject(new Error(`cannot load onnxruntime-web from ${script.src}`));
    document.head.append(script);
  });
  return ortLoading;
}

// -------------------------------------------------------------------------- bundle loading

async function fetchOk(url) {
  const response = await fetch(url, { cache: 'no-cache' });
  if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
  return response;
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** sha256 of bytes as 64 hex digits (WebCrypto: only in secure contexts, which include
 * http://localhost and http://127.0.0.1 but not plain http from another host). */
export async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) {
    throw new Error('WebCrypto is unavailable (not a secure context): serve the bundle over '
      + 'https or from localhost, or it cannot be verified');
  }
  return hex(await crypto.subtle.digest('SHA-256', bytes));
}

/**
 * Fetch manifest.json and the "web" artifact from baseUrl (the bundle root), refuse the
 * model unless its sha256 is the manifest's, and create its InferenceSession.
 * Returns { manifest, artifact, sha256, session, inputName, baseUrl }.
 */
export async function loadBundle(baseUrl = '../') {
  const base = new URL(baseUrl, document.baseURI);
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  const manifest = await (await fetchOk(new URL('manifest.json', base))).json();
  const artifact = (manifest.artifacts ?? []).find((a) => a.format === 'web');
  if (!artifact) {
    const have = (manifest.artifacts ?? []).map((a) => a.format).join(', ') || 'none';
    throw new Error(`${manifest.name} ${manifest.version} has no web artifact (it has: ${have})`);
  }
  const bytes = await (await fetchOk(new URL(artifact.path, base))).arrayBuffer();
  const actual = await sha256Hex(bytes);
  if (actual !== artifact.sha256) {
    throw new Error(`${artifact.path}: sha256 mismatch: the manifest expects `
      + `${artifact.sha256}, the file has ${actual} (${bytes.byteLength} bytes; the manifest `
      + `says ${artifact.bytes}): the model is not used`);
  }

  const ort = await loadOrt();
  // Everything from the bundle's own ort/ folder: no CDN, works offline. One thread and no
  // proxy worker: the models are small, and threads would need COOP/COEP headers.
  ort.env.wasm.wasmPaths = ORT_DIR.href;
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  const session = await ort.InferenceSession.create(new Uint8Array(bytes),
    { executionProviders: ['wasm'] });
  if (session.inputNames.length !== 1 || !session.outputNames.includes(PROBABILITIES)) {
    throw new Error(`the model does not follow the model contract: inputs `
      + `[${session.inputNames}], outputs [${session.outputNames}]; expected one input and an `
      + `output named "${PROBABILITIES}"`);
  }
  return {
    manifest, artifact, sha256: actual, session, ort, baseUrl: base.href,
    inputName: session.inputNames[0],
    // run() calls are chained: onnxruntime-web does not support concurrent run() on one
    // session, and a form fires input events faster than a model may answer.
    queue: Promise.resolve(),
  };
}

// -------------------------------------------------------------------------------- encoding

export class RecordError extends Error {
  constructor(message, { record, field } = {}) {
    const where = [];
    if (record !== undefined) where.push(`record ${record}`);
    if (field !== undefined) where.push(`field ${JSON.stringify(field)}`);
    super((where.length ? `${where.join(', ')}: ` : '') + message);
    this.name = 'RecordError';
    this.record = record;
    this.field = field;
  }
}

const ABSENT = Symbol('absent');

function typeName(value) {
  if (value === null) return 'null';
  return Array.isArray(value) ? 'array' : typeof value;
}

// The largest finite float32: what the model's input tensor can hold.
const FLOAT32_MAX = 3.4028234663852886e38;

function numericEncoder(feature) {
  const name = feature.name;
  // Unbounded still means "fits the model's float32 input": +-Infinity fail the range test.
  const low = feature.minimum ?? -FLOAT32_MAX;
  const high = feature.maximum ?? FLOAT32_MAX;
  const allowMissing = Boolean(feature.allow_missing);
  const policy = feature.out_of_range ?? 'error';
  const missing = (index) => {
    if (allowMissing) return NaN;
    throw new RecordError('value is missing and this feature requires one',
      { record: index, field: name });
  };
  return (value, index) => {
    let number;
    if (typeof value === 'number') number = value;
    else if (value === null || value === undefined || value === ABSENT) return missing(index);
    else if (typeof value === 'string') {
      throw new RecordError(`expected a number, got text ${JSON.stringify(value)}`,
        { record: index, field: name });
    } else if (typeof value === 'boolean') number = value ? 1 : 0; // Python: bool is a Real
    else if (typeof value === 'bigint') number = Number(value);
    else {
      throw new RecordError(`expected a number, got ${typeName(value)}`,
        { record: index, field: name });
    }
    if (low <= number && number <= high) return number;
    if (Number.isNaN(number)) return missing(index);
    if (!Number.isFinite(number)) {
      throw new RecordError('value is infinite', { record: index, field: name });
    }
    if (policy === 'clip') return Math.min(Math.max(number, low), high);
    if (policy === 'accept' && Math.abs(number) <= FLOAT32_MAX) return number;
    throw new RecordError(`value ${number} is outside the allowed range [${low}, ${high}]`,
      { record: index, field: name });
  };
}

function categoricalEncoder(feature) {
  const name = feature.name;
  // A Map, not an object: a value such as "constructor" must not find Object.prototype.
  const codes = new Map(feature.vocabulary.map((value, code) => [value, code]));
  const allowMissing = Boolean(feature.allow_missing);
  return (value, index) => {
    if (typeof value === 'string') return codes.get(value) ?? UNKNOWN_CODE;
    if (value === null || value === undefined || value === ABSENT || Number.isNaN(value)) {
      if (allowMissing) return UNKNOWN_CODE;
      throw new RecordError('value is missing and this feature requires one',
        { record: index, field: name });
    }
    throw new RecordError(`expected text (one of ${codes.size} categories), got `
      + `${typeName(value)} ${JSON.stringify(value)}`, { record: index, field: name });
  };
}

const compiled = new WeakMap();

function encodersFor(schema) {
  let fields = compiled.get(schema);
  if (!fields) {
    fields = schema.features.map((f) => [f.name,
      f.kind === 'categorical' ? categoricalEncoder(f) : numericEncoder(f)]);
    compiled.set(schema, fields);
  }
  return fields;
}

/**
 * One record (an object of field name -> value) to its row of the model contract: numbers
 * in schema order, a category as its vocabulary index, unknown category -1, missing NaN
 * (numeric) or -1 (categorical) where the schema allows it. Fields the schema does not know
 * are ignored. Throws RecordError naming the record index and field otherwise.
 */
export function encodeRecord(schema, record, index = 0) {
  if (record === null || typeof record !== 'object' || Array.isArray(record)) {
    throw new RecordError('expected a mapping of field names to values, got '
      + typeName(record), { record: index });
  }
  return encodersFor(schema).map(([name, encode]) =>
    encode(Object.hasOwn(record, name) ? record[name] : ABSENT, index));
}

/** Records -> Float32Array [N * F] (row-major), the model's input tensor data. */
export function encodeRecords(schema, records) {
  const width = schema.features.length;
  const data = new Float32Array(records.length * width);
  records.forEach((record, i) => data.set(encodeRecord(schema, record, i), i * width));
  return data;
}

// --------------------------------------------------------------------------------- scoring

/** Run encoded rows (Float32Array [N * F]) -> Float32Array [N * n_outputs], row-major
 * (class probabilities, or a regressor's value; a [N] output is one column). */
async function run(bundle, data, rows) {
  const width = bundle.manifest.schema.features.length;
  const tensor = new bundle.ort.Tensor('float32', data, [rows, width]);
  const result = bundle.queue.then(() =>
    bundle.session.run({ [bundle.inputName]: tensor }, [PROBABILITIES]));
  bundle.queue = result.catch(() => {}); // a failed run must not block the next one
  const output = (await result)[PROBABILITIES];
  if (output.dims.length < 1 || output.dims.length > 2 || output.dims[0] !== rows) {
    throw new Error(`the model returns shape [${output.dims}] for ${rows} rows`);
  }
  return output.data;
}

/** Probabilities of every class, [N][n_classes], in the order of schema.classes. */
export async function predictProba(bundle, records) {
  const data = encodeRecords(bundle.manifest.schema, records);
  const out = await run(bundle, data, records.length);
  const classes = out.length / Math.max(records.length, 1);
  return records.map((_, i) => Array.from(out.subarray(i * classes, (i + 1) * classes)));
}

/**
 * The score of each record: P(schema.classes[1]), the positive class ("churn = Yes"), as
 * an array of numbers (float32 values, exactly what onnxruntime computed). Binary models
 * only: use predict() for the others.
 */
export async function score(bundle, records) {
  const task = taskOf(bundle.manifest.schema);
  if (task !== 'binary') {
    throw new Error(`${bundle.manifest.name} is a ${task} model: it has no positive class; `
      + 'use predict()');
  }
  if (records.length === 0) return [];
  return (await predictProba(bundle, records)).map((row) => row[1]);
}

/**
 * What fits the task, per record: {label, probabilities: {class: p}} for a classifier (the
 * label of the most probable class, the first on a tie, as scikit-learn), {value} for a
 * regressor.
 */
export async function predict(bundle, records) {
  if (records.length === 0) return [];
  const { schema } = bundle.manifest;
  const rows = await predictProba(bundle, records);
  if (taskOf(schema) === 'regression') return rows.map((row) => ({ value: row[0] }));
  return rows.map((row) => {
    let best = 0;
    row.forEach((p, k) => { if (p > row[best]) best = k; });
    const probabilities = Object.fromEntries(schema.classes.map((c, k) => [c, row[k]]));
    return { label: schema.classes[best], probabilities };
  });
}

/**
 * The manifest's golden vectors, as the Python edge runtime checks them: each record must
 * encode to its golden input (bit for bit after float32 rounding, NaN equal to NaN), and
 * the model must give its golden probabilities within manifest.tolerance.
 * Returns { vectors, worst } or throws an Error saying which vector failed.
 */
export async function selfTest(bundle) {
  const { manifest } = bundle;
  const golden = manifest.golden ?? [];
  if (golden.length === 0) {
    throw new Error(`${manifest.name} ${manifest.version} carries no golden vectors`);
  }
  const width = manifest.schema.features.length;
  const data = new Float32Array(golden.length * width);
  golden.forEach((g, i) => {
    let row;
    try {
      row = encodeRecord(manifest.schema, g.record, i);
    } catch (error) {
      throw new Error(`golden vector ${i} (${g.note}) cannot be encoded: ${error.message}`);
    }
    row.forEach((value, j) => {
      const got = Math.fround(value);
      const want = g.input[j] === null ? NaN : Math.fround(g.input[j]);
      if (!(Object.is(got, want) || got === want)) { // NaN-aware; 0 equals -0 as in numpy
        throw new Error(`golden vector ${i} (${g.note}) encodes differently in this browser: `
          + `feature ${manifest.schema.features[j].name} is ${got}, the manifest says ${want}`);
      }
    });
    data.set(row, i * width);
  });
  const out = await run(bundle, data, golden.length);
  const classes = golden[0].probabilities.length;
  if (out.length !== golden.length * classes) {
    throw new Error(`the model returns ${out.length / golden.length} classes, the golden `
      + `vectors ${classes}`);
  }
  // Probabilities within the tolerance; a regressor's value within it plus a share of
  // the value, as the Python self-test (manifest.within_tolerance).
  const rtol = taskOf(manifest.schema) === 'regression' ? REGRESSION_RTOL : 0;
  let worst = 0;
  let failed = -1;
  golden.forEach((g, i) => g.probabilities.forEach((p, c) => {
    let difference = Math.abs(out[i * classes + c] - p);
    if (Number.isNaN(difference)) difference = Infinity; // a NaN output fails, never passes
    worst = Math.max(worst, difference);
    if (failed < 0 && !(difference <= manifest.tolerance + rtol * Math.abs(p))) failed = i;
  }));
  if (failed >= 0) {
    const allowed = rtol ? `${manifest.tolerance} + ${rtol} x |value|` : `${manifest.tolerance}`;
    const off = Math.max(...golden[failed].probabilities.map(
      (p, c) => Math.abs(out[failed * classes + c] - p)));
    throw new Error(`the web model of ${manifest.name} ${manifest.version} fails its `
      + `self-test: golden vector ${failed} (${golden[failed].note}) is off by `
      + `${Number.isNaN(off) ? 'NaN' : off.toPrecision(3)} (tolerance ${allowed})`);
  }
  return { vectors: golden.length, worst };
}

// -- showing an answer ---------------------------------------------------------------------

/** Holdout metrics worth showing, per task (docs/architecture.md §2). */
export const METRICS = {
  binary: { auroc: 'holdout AUROC', average_precision: 'holdout AP' },
  multiclass: {
    accuracy: 'holdout accuracy',
    auroc_macro: 'holdout AUROC (macro OvR)',
    log_loss: 'holdout log loss',
  },
  regression: { mae: 'holdout MAE', rmse: 'holdout RMSE', r2: 'holdout R²' },
};

/**
 * Show a multi-class or regression answer of predict() in a page with the demo's elements
 * (#score-panel, #probability, #bar, #classes, #caption, #record-error): the label and a
 * bar per class, or the value. Text only through textContent.
 */
export function showAnswer(doc, manifest, answer) {
  const $ = (id) => doc.getElementById(id);
  const make = (tag, className, text = '') => {
    const node = doc.createElement(tag);
    node.className = className;
    node.textContent = text;
    return node;
  };
  $('score-panel').hidden = false;
  $('record-error').hidden = true;
  $('bar').parentElement.hidden = true;
  const { target } = manifest.schema;
  if (answer.value !== undefined) {
    $('probability').textContent = Number(answer.value.toPrecision(6)).toLocaleString('en-US');
    $('probability').dataset.value = String(answer.value);
    $('caption').textContent = `predicted ${target}, computed in this browser`;
    return;
  }
  $('probability').textContent = answer.label;
  $('probability').dataset.value = answer.label;
  const rows = Object.entries(answer.probabilities).map(([name, p]) => {
    const bar = make('div', 'class-bar');
    bar.style.width = `${Math.min(100, Math.max(0, p * 100))}%`; // CSSOM: allowed by the CSP
    const track = make('span', 'class-track');
    track.append(bar);
    const row = make('li', name === answer.label ? 'top' : '');
    row.append(make('span', 'class-name', name), track, make('span', '', `${(p * 100).toFixed(1)} %`));
    row.dataset.label = name;
    row.dataset.value = String(p);
    return row;
  });
  $('classes').replaceChildren(...rows);
  $('classes').hidden = false;
  $('caption').textContent = manifest.schema.outputs === 'decision'
    ? `highest-scoring ${target} (decision scores, not probabilities), computed in this browser`
    : `most probable ${target}, computed in this browser`;
}

// -- a form for one record ---------------------------------------------------------------

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children); // strings become text nodes, never markup
  return node;
}

// A string guaranteed not to be in the vocabulary: the "other / unknown" choice scores as
// an unseen category (code -1), exactly as a device would score it.
function otherValue(vocabulary) {
  let other = '(other)';
  while (vocabulary.includes(other)) other += '*';
  return other;
}

/**
 * Fill `form` with one labelled control per feature of `schema`, starting from the values
 * of `example` (a record), and return a function that reads the record the form now holds.
 * Every label and value comes from the manifest, so all of it goes in as text.
 */
export function buildForm(form, schema, example) {
  const readers = [];
  for (const feature of schema.features) {
    let control;
    let kind;
    const start = example?.[feature.name];
    if (feature.kind === 'categorical') {
      const other = otherValue(feature.vocabulary);
      control = element('select', { name: feature.name },
        ...feature.vocabulary.map((v) => element('option', { value: v }, v)),
        element('option', { value: other }, 'other / unknown'));
      control.value = feature.vocabulary.includes(start) ? start : feature.vocabulary[0];
      kind = `one of ${feature.vocabulary.length}`;
      readers.push([feature.name, () => control.value]);
    } else {
      control = element('input', { type: 'number', name: feature.name, step: 'any' });
      if (feature.minimum !== null && feature.minimum !== undefined) control.min = feature.minimum;
      if (feature.maximum !== null && feature.maximum !== undefined) control.max = feature.maximum;
      if (typeof start === 'number') control.value = String(start);
      if (feature.allow_missing) control.placeholder = 'empty = missing';
      kind = feature.allow_missing ? 'number, may be empty' : 'number';
      // An empty box is a missing value (allowed or not: the encoder decides, as on a device).
      readers.push([feature.name, () => (control.value === '' ? null : Number(control.value))]);
    }
    form.append(element('label', {}, element('span', {}, feature.name.replaceAll('_', ' ')),
      control, element('span', { className: 'kind' }, kind)));
  }
  return () => Object.fromEntries(readers.map(([name, read]) => [name, read()]));
}
