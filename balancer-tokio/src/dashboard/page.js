// The balancer's dashboard: reads the state from /dashboard/events (server-sent events read
// with fetch, so that the bearer token goes in a header, never in a URL), falls back to polling
// /dashboard/state when the stream limit is reached, and drains through the admin API.
'use strict';

const TOKEN_KEY = 'balancer-admin-token';
const POLL_MS = 2000;
const RECONNECT_MS = 2000;
const STREAM_RETRY_MS = 30000;
const DECISIONS_MS = 2000;
const DECISIONS_SHOWN = 20;

const $ = (id) => document.getElementById(id);
let updates = 0;
let searching = null;
let stopped = false;
let pollTimer = null;

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function headers() {
  const t = token();
  return t ? { Authorization: 'Bearer ' + t } : {};
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function say(text, isError) {
  const message = $('message');
  message.textContent = text;
  message.className = isError ? 'message error' : 'message';
}

function connection(text, kind) {
  const node = $('connection');
  node.textContent = text;
  node.className = 'connection ' + (kind || '');
}

// A 401 stops everything until the operator types the token.
function needToken(why) {
  stopped = true;
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  connection('token needed', 'error');
  $('token-form').hidden = false;
  $('token').focus();
  say(why || 'This admin listener wants its bearer token (the contents of admin_token_file).', true);
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ cache: 'no-store', headers: headers() }, options || {}));
  if (response.status === 401) {
    needToken(token() ? 'The token was refused: type it again.' : null);
    throw new Error('unauthorized');
  }
  return response;
}

const fmt = {
  ms(v) { return v === null || v === undefined ? '–' : (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + ' ms'; },
  rate(v) { return v === null || v === undefined ? '–' : v.toFixed(1) + '/s'; },
  int(v) { return v === null || v === undefined ? '–' : String(v); },
};

// One small line chart: series of [values], each with a colour; nulls leave gaps.
function chart(title, series, unit) {
  const width = 600, height = 90, pad = 2;
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  if (max === 0) max = 1;
  const n = Math.max(1, series[0].values.length - 1);
  for (const s of series) {
    let d = '';
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      const x = (i / n) * width;
      const y = height - pad - (v / max) * (height - 2 * pad);
      d += (pen ? 'L' : 'M') + x.toFixed(1) + ' ' + y.toFixed(1);
      pen = true;
    });
    // A second between two empty ones has no line to be on: a dot.
    s.values.forEach((v, i) => {
      if (v === null || (s.values[i - 1] ?? null) !== null || (s.values[i + 1] ?? null) !== null) return;
      const dot = document.createElementNS(ns, 'circle');
      dot.setAttribute('cx', ((i / n) * width).toFixed(1));
      dot.setAttribute('cy', (height - pad - (v / max) * (height - 2 * pad)).toFixed(1));
      dot.setAttribute('r', '2.5');
      dot.setAttribute('fill', s.colour);
      svg.append(dot);
    });
    const path = document.createElementNS(ns, 'path');
    path.setAttribute('d', d || 'M0 0');
    path.setAttribute('fill', 'none');
    path.setAttribute('stroke', s.colour);
    path.setAttribute('stroke-width', '1.5');
    path.setAttribute('vector-effect', 'non-scaling-stroke');
    svg.append(path);
  }
  const legend = el('div', { class: 'legend' },
    ...series.map((s) => {
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = s.colour;
      return el('span', {}, swatch, s.name);
    }),
    el('span', { class: 'muted' }, `max ${unit === 'ms' ? fmt.ms(max) : fmt.rate(max)}, last ${series[0].values.length} s`));
  return el('div', { class: 'chart' }, el('div', { class: 'title' }, title), svg, legend);
}

function predictionLine(pool, state) {
  const p = pool.prediction;
  if (!state.trace) {
    return el('div', { class: 'prediction muted' }, 'Simulator prediction: off (no [trace] recording).');
  }
  if (!p) {
    return el('div', { class: 'prediction muted' }, `Simulator prediction: the first replay comes a few seconds after start, then every ${state.prediction_every_s} s.`);
  }
  if (p.error) {
    return el('div', { class: 'prediction muted' }, `Simulator prediction (${p.at}): none — ${p.error}`);
  }
  return el('div', { class: 'prediction', 'data-prediction': 'yes' },
    'Simulator, last minute replayed (', p.requests, ' requests, at ', p.at, '): p99 ',
    el('b', {}, fmt.ms(p.predicted.p99_ms)), ' predicted vs ', el('b', {}, fmt.ms(p.measured_p99_ms)), ' measured');
}

async function drain(pool, address, undo) {
  const action = undo ? 'undrain' : 'drain';
  const path = `/backends/${encodeURIComponent(pool)}/${encodeURIComponent(address)}/${action}`;
  try {
    const response = await api(path, { method: 'POST' });
    const body = (await response.text()).trim();
    say(response.ok ? body : `${action} refused (${response.status}): ${body}`, !response.ok);
    await refresh();
  } catch (err) {
    if (err.message !== 'unauthorized') say(`${action} failed: ${err.message}`, true);
  }
}

function backendRow(pool, b) {
  const out = b.state === 'draining' || b.state === 'drained';
  const button = el('button', { class: 'drain', type: 'button', textContent: out ? 'undrain' : 'drain' });
  button.addEventListener('click', () => drain(pool.pool, b.address, out));
  const ejected = b.ejected_for_ms ? ` (out ${(b.ejected_for_ms / 1000).toFixed(1)} s more)` : '';
  const health = b.state === 'down' ? 'failing' : (b.consecutive_failures > 0 ? `${b.consecutive_failures} failed in a row` : 'ok');
  return el('tr', { 'data-backend': b.address },
    el('td', {}, b.address, b.removing ? el('span', { class: 'muted' }, ' (leaving)') : null, b.warming ? el('span', { class: 'muted' }, ' (warming up)') : null),
    el('td', { class: `state state-${b.state}` }, b.state),
    el('td', { class: 'num pending' }, b.pending),
    el('td', { class: 'num' }, fmt.ms(b.ewma_ms)),
    el('td', { class: 'num' }, b.weight),
    el('td', { class: 'num' }, b.dispatched),
    el('td', { class: 'num' }, b.failed),
    el('td', {}, health + (pool.health_checks ? '' : ' (no checks)')),
    el('td', { class: 'num' }, b.ejections + ejected),
    el('td', {}, button));
}

function poolSection(pool, state) {
  const series = pool.series;
  const rate = series.requests;
  const errors = series.errors;
  const minute = pool.last_minute;
  const five = pool.last_5_minutes;
  const head = el('tr', {}, ...['backend', 'state', 'pending', 'EWMA', 'weight', 'dispatched', 'failed', 'health', 'ejections', '']
    .map((h, i) => el('th', { class: i >= 2 && i <= 6 || i === 8 ? 'num' : '' }, h)));
  return el('article', { class: 'pool', 'data-pool': pool.pool },
    el('h2', {}, 'pool ', pool.pool, el('span', { class: 'muted' }, ` — ${pool.policy || '?'}, ${pool.backends.length} backends, ${pool.in_flight} in flight`)),
    el('div', { class: 'summary' },
      el('span', {}, 'last minute: ', el('b', { class: 'rate' }, fmt.rate(minute.rate_per_s)), ', p50 ', el('b', {}, fmt.ms(minute.p50_ms)), ', p99 ', el('b', { class: 'p99' }, fmt.ms(minute.p99_ms)), `, ${minute.errors} 5xx`),
      el('span', { class: 'muted' }, `${five.seconds >= 120 ? `last ${Math.round(five.seconds / 60)} min` : `last ${five.seconds} s`}: ${fmt.rate(five.rate_per_s)}, p50 ${fmt.ms(five.p50_ms)}, p99 ${fmt.ms(five.p99_ms)}, ${five.requests} requests`)),
    predictionLine(pool, state),
    el('div', { class: 'charts' },
      chart('requests per second', [{ name: 'requests', colour: '#2b6cb0', values: rate }, { name: '5xx', colour: '#c62f2f', values: errors }], 'rate'),
      chart('latency per second', [{ name: 'p50', colour: '#1f8f4e', values: series.p50_ms }, { name: 'p99', colour: '#b7791f', values: series.p99_ms }], 'ms')),
    el('table', {}, el('thead', {}, head), el('tbody', {}, ...pool.backends.map((b) => backendRow(pool, b)))));
}

function render(state) {
  const pools = $('pools');
  pools.replaceChildren(...state.pools.map((pool) => poolSection(pool, state)));
  $('clock').textContent = state.time;
  updates += 1;
  document.body.dataset.updates = String(updates);
}

async function refresh() {
  const response = await api('/dashboard/state');
  if (response.ok) render(await response.json());
}

function startPolling() {
  if (pollTimer) return;
  connection('polling', 'polling');
  pollTimer = setInterval(() => { refresh().catch(() => connection('unreachable', 'error')); }, POLL_MS);
}

// Reads one server-sent event stream until it ends; then opens the next.
async function stream() {
  if (stopped) return;
  let response;
  try {
    response = await api('/dashboard/events');
  } catch (err) {
    if (err.message !== 'unauthorized') {
      connection('unreachable, retrying', 'error');
      setTimeout(stream, RECONNECT_MS);
    }
    return;
  }
  if (response.status === 503) {
    // The stream limit (MAX_DASHBOARD_STREAMS) is reached: poll, and try a stream later.
    say((await response.text()).trim(), false);
    startPolling();
    setTimeout(stream, STREAM_RETRY_MS);
    return;
  }
  if (!response.ok) {
    connection(`stream refused: ${response.status}`, 'error');
    say((await response.text()).trim(), true);
    return;
  }
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  connection('live', 'live');
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
        if (data) render(JSON.parse(data));
      }
    }
  } catch (err) {
    connection('stream lost, reconnecting', 'error');
  }
  setTimeout(stream, stopped ? 0 : RECONNECT_MS);
}

function decisionItem(d) {
  const verdict = d.decision === 'dispatch'
    ? el('span', {}, '→ ', el('b', {}, d.chosen))
    : el('span', { class: 'reject' }, 'rejected: ', d.reject_reason);
  return el('li', { 'data-request-id': d.request_id || '' },
    el('div', { class: 'meta' }, d.time || '', ' · ', el('b', {}, d.request_id || ''), ` · pool ${d.pool} · ${d.policy}`, d.retry ? ' · retry' : '', d.try ? ` · try ${d.try}` : ''),
    el('div', {}, verdict),
    el('div', { class: 'rule' }, d.rule));
}

async function loadDecisions() {
  if (stopped) return;
  try {
    if (searching) {
      const response = await api('/explain/' + encodeURIComponent(searching));
      if (response.ok) {
        const found = await response.json();
        $('decisions-note').textContent = `request ${found.request_id}: ${found.tries.length} ${found.tries.length === 1 ? 'try' : 'tries'}`;
        $('decisions').replaceChildren(...found.tries.map((t) => decisionItem(Object.assign({ request_id: found.request_id }, t))));
      } else {
        $('decisions-note').textContent = (await response.text()).trim();
        $('decisions').replaceChildren();
      }
      return;
    }
    const response = await api(`/dashboard/decisions?limit=${DECISIONS_SHOWN}`);
    if (!response.ok) return;
    const list = await response.json();
    $('decisions-note').textContent = list.note || `latest ${list.decisions.length} of the ring's ${list.ring_size} tries, newest first`;
    $('decisions').replaceChildren(...list.decisions.map(decisionItem));
  } catch (err) {
    // An unreachable listener shows in the connection badge; a 401 in the token form.
  }
}

function start() {
  stopped = false;
  $('forget-token').hidden = !token();
  stream();
  loadDecisions();
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $('token').value = '';
  $('token-form').hidden = true;
  say('', false);
  start();
});

$('forget-token').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

$('search-form').addEventListener('submit', (event) => {
  event.preventDefault();
  searching = $('request-id').value.trim() || null;
  loadDecisions();
});

$('clear-search').addEventListener('click', () => {
  searching = null;
  $('request-id').value = '';
  loadDecisions();
});

// Asks first whether a token is wanted, so that a page without one shows the form instead of
// sending requests bound to be refused.
async function begin() {
  try {
    const response = await fetch('/dashboard/auth', { cache: 'no-store' });
    const auth = await response.json();
    if (auth.token_required && !token()) {
      needToken();
      return;
    }
  } catch (err) {
    connection('unreachable', 'error');
  }
  start();
}

setInterval(loadDecisions, DECISIONS_MS);
begin();
