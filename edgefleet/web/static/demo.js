// The browser demo: the fleet's promoted web bundle, verified and run in this page.
//
// Before a single record is scored, this browser checks on its own what the server already
// checked: manifest.json is the manifest the signed rollout state names (its sha256), its
// Ed25519 signature verifies with the publisher key (WebCrypto), and the bundle's own
// edgefleet.js refuses a model whose sha256 is not the manifest's and runs the golden
// vectors. Then the form scores each change locally, with the network gone or not.
// Manifest text (feature names, categories) reaches the page through DOM text only.

const root = document.getElementById('demo');
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const element = Object.assign(document.createElement(tag), props);
  element.append(...children); // strings become text nodes, never markup
  return element;
}

function setStatus(kind, text) {
  $('status').className = `status ${kind}`;
  $('status').textContent = text;
}

function check(text, ok = true) {
  $('checks').append(el('li', { className: ok ? '' : 'failed' }, text));
}

function detail(term, value, mono = false) {
  $('details').append(el('dt', {}, term), el('dd', {}, mono ? el('code', {}, value) : value));
}

function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
}

function fromHex(text) {
  const bytes = new Uint8Array(text.length / 2);
  for (let i = 0; i < bytes.length; i += 1) bytes[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

async function fetchBytes(url) {
  const response = await fetch(url, { cache: 'no-cache' });
  if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

class Refused extends Error {}

/** manifest.json, after its sha256 and signature checked out; Refused otherwise. */
async function verifiedManifest(base) {
  if (!globalThis.crypto?.subtle) {
    throw new Refused('WebCrypto is unavailable (not a secure context): open the dashboard on '
      + 'localhost or over https, or the bundle cannot be verified');
  }
  const bytes = await fetchBytes(new URL('manifest.json', base));
  const digest = hex(await crypto.subtle.digest('SHA-256', bytes));
  if (digest !== root.dataset.manifestSha256) {
    throw new Refused(`manifest.json has sha256 ${digest}, but the rollout state names `
      + `${root.dataset.manifestSha256}: not the promoted model`);
  }
  check(`manifest.json is the one the signed rollout state names (sha256 ${digest.slice(0, 12)}…)`);
  const signature = JSON.parse(new TextDecoder().decode(await fetchBytes(new URL('manifest.sig', base))));
  if (signature.algorithm !== 'ed25519' || signature.key_id !== root.dataset.keyId) {
    throw new Refused(`manifest.sig is by key ${signature.key_id} (${signature.algorithm}); the `
      + `publisher key is ${root.dataset.keyId}`);
  }
  let key = null;
  try {
    key = await crypto.subtle.importKey('raw', fromHex(root.dataset.publicKey), { name: 'Ed25519' },
      false, ['verify']);
  } catch {
    // Browsers without Ed25519 in WebCrypto: the server verified the signature already.
    check('this browser has no Ed25519: the signature was checked by the dashboard only', false);
  }
  if (key !== null) {
    const valid = await crypto.subtle.verify({ name: 'Ed25519' }, key, fromBase64(signature.signature), bytes);
    if (!valid) throw new Refused('manifest.sig does not verify: the manifest was changed after signing');
    check(`signed by publisher key ${root.dataset.keyId} (Ed25519, verified with WebCrypto)`);
  }
  return JSON.parse(new TextDecoder().decode(bytes));
}


function showScore(manifest, probability) {
  const percent = probability * 100;
  $('score-panel').hidden = false;
  $('record-error').hidden = true;
  $('probability').textContent = `${percent.toFixed(1)} %`;
  $('probability').dataset.value = String(probability);
  const bar = $('bar');
  bar.style.width = `${Math.min(100, Math.max(0, percent))}%`; // CSSOM: allowed by the CSP
  bar.className = probability < 0.3 ? '' : probability < 0.6 ? 'mid' : 'high';
  $('caption').textContent = `probability that ${manifest.schema.target} = `
    + `${manifest.schema.classes[1]}, computed in this browser`;
}

function showAnswer(manifest, answer) {
  if ((manifest.schema.task ?? 'binary') === 'binary') {
    showScore(manifest, answer.probabilities[manifest.schema.classes[1]]);
  } else {
    ef.showAnswer(document, manifest, answer);
  }
}

function showError(message) {
  $('record-error').textContent = message;
  $('record-error').hidden = false;
  $('probability').textContent = '–';
  delete $('probability').dataset.value;
}

let ef; // the bundle's edgefleet.js, once imported

async function main() {
  const base = new URL(root.dataset.bundle, document.baseURI);
  let bundle;
  let test;
  try {
    const manifest = await verifiedManifest(base);
    const web = (manifest.artifacts ?? []).find((a) => a.format === 'web');
    ef = await import(new URL('web/edgefleet.js', base).href);
    bundle = await ef.loadBundle(base.href);
    // edgefleet.js read the manifest again: it must be the one verified above.
    if (bundle.manifest.version !== manifest.version || bundle.artifact.sha256 !== web?.sha256) {
      throw new Refused('the manifest changed while the page loaded: reload');
    }
    check(`model ${bundle.artifact.path} matches the manifest's sha256 `
      + `(${(bundle.artifact.bytes / 1024).toFixed(0)} KiB)`);
    test = await ef.selfTest(bundle);
    check(`${test.vectors} golden vectors agree within ${bundle.manifest.tolerance.toExponential(0)} `
      + `(worst ${test.worst.toExponential(1)})`);
  } catch (error) {
    check(error.message, false);
    setStatus('bad', `Refused: ${error.message}`);
    $('model').textContent = `${root.dataset.label}: not loaded`;
    document.body.dataset.state = 'refused';
    return;
  }
  const { manifest } = bundle;
  setStatus('ok', `Verified: ${manifest.name} ${manifest.version} scores in this browser, `
    + 'offline once loaded.');
  $('model').textContent = `${manifest.name} ${manifest.version} · ${manifest.model_family}, the `
    + `promoted model of fleet ${root.dataset.fleet} (rollout ${root.dataset.sequence})`;
  detail('model', `${manifest.name} ${manifest.version}`);
  detail('family', manifest.model_family);
  detail('created', String(manifest.created).replace('T', ' '));
  const task = manifest.schema.task ?? 'binary';
  if (task !== 'binary') $('title').textContent = `Predict ${manifest.schema.target}`;
  detail('task', task === 'multiclass' ? `multi-class (${manifest.schema.classes.length} classes)` : task);
  for (const [key, term] of Object.entries(ef.METRICS[task] ?? {})) {
    const value = manifest.metrics?.[key];
    if (typeof value === 'number') detail(term, value.toFixed(4));
  }
  detail('sha256', bundle.sha256, true);
  detail('runtime', `onnxruntime-web ${bundle.ort.env.versions?.web ?? ''} (WebAssembly)`);

  // The form starts on the first golden record: a real holdout customer.
  const readRecord = ef.buildForm($('form'), manifest.schema, manifest.golden?.[0]?.record);
  let latest = 0;
  const update = async () => {
    const ticket = ++latest;
    const record = readRecord();
    try {
      ef.encodeRecord(manifest.schema, record); // a clear message before the model is asked
      const [answer] = await ef.predict(bundle, [record]);
      if (ticket === latest) showAnswer(manifest, answer); // drop stale answers
    } catch (error) {
      if (ticket === latest) showError(error.message);
    }
  };
  $('form').addEventListener('input', update);
  await update();
  // For scripts and tests: the loaded bundle and the form's current record.
  window.edgefleetDemo = {
    bundle,
    selfTest: test,
    readRecord,
    score: (records) => ef.score(bundle, records),
    predict: (records) => ef.predict(bundle, records),
  };
  document.body.dataset.state = 'ready';
}

main().catch((error) => {
  setStatus('bad', `Error: ${error.message}`);
  document.body.dataset.state = 'error';
});
