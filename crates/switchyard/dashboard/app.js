// Switchyard dashboard. It reads the gateway's public admin API (the same endpoints
// README.md documents) with the admin key from this tab's session storage, and draws its
// charts as SVG itself: no libraries, no network beyond the gateway.
'use strict';

const KEY_STORE = 'switchyard.adminKey';
const REFRESH_MS = 5000;
// Each range's step: the analytics API keeps 1 min points for a day and 1 h points for 7 days.
const RANGES = {
  '15m': { from: '-15m', interval: '1m', seconds: 900 },
  '1h': { from: '-1h', interval: '1m', seconds: 3600 },
  '24h': { from: '-24h', interval: '15m', seconds: 86400 },
  '7d': { from: '-7d', interval: '1h', seconds: 604800 },
};
const METRICS = 'requests,rps,errors,error_rate,p50,p95,p99,ttft_p50,ttft_p95,tokens_in,tokens_out,cost,cache_hits,cache_hit_rate';
const COLORS = ['--s1', '--s2', '--s3', '--s4', '--s5', '--s6'];

const state = {
  // The admin key; null for a gateway without a master key (or before signing in).
  key: null,
  // Whether the board is shown: nothing is fetched while signed out.
  signedIn: false,
  range: '1h',
  spendBy: 'key',
  timer: null,
  selected: null,
  requests: [],
  refreshing: false,
  notice: '',
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    // Through the CSSOM: the page's Content-Security-Policy refuses style attributes.
    else if (name === 'style') node.style.cssText = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// ---- formatting ----

function fmtNum(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  const abs = Math.abs(value);
  if (abs >= 1e9) return (value / 1e9).toFixed(digits) + 'G';
  if (abs >= 1e6) return (value / 1e6).toFixed(digits) + 'M';
  if (abs >= 1e4) return (value / 1e3).toFixed(digits) + 'k';
  if (abs >= 100 || Number.isInteger(value)) return String(Math.round(value));
  if (abs < 1) return value.toPrecision(Math.max(1, digits + 1));
  return value.toFixed(digits);
}
function fmtMs(value) {
  if (value === null || value === undefined) return '–';
  if (value >= 10000) return (value / 1000).toFixed(1) + ' s';
  if (value >= 100) return Math.round(value) + ' ms';
  return value.toFixed(1) + ' ms';
}
function fmtUsd(value) {
  if (value === null || value === undefined) return '–';
  if (value === 0) return '$0';
  if (Math.abs(value) < 0.01) return '$' + value.toFixed(5);
  if (Math.abs(value) < 100) return '$' + value.toFixed(3);
  return '$' + value.toFixed(2);
}
function fmtPct(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  return (value * 100).toFixed(value < 0.1 ? 1 : 0) + '%';
}
function fmtTime(ms, withDate) {
  const date = new Date(ms);
  const hm = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (!withDate) return hm;
  return date.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + hm;
}
function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' d ago';
}
const sum = (values) => values.reduce((a, v) => a + (v || 0), 0);

// ---- the API ----

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { accept: 'application/json' };
  if (state.key) headers.authorization = 'Bearer ' + state.key;
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method: options.method || 'GET',
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (error) {
    throw new ApiError(0, 'the gateway did not answer (' + error.message + ')');
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = (body && body.error && body.error.message) || response.statusText;
    throw new ApiError(response.status, message);
  }
  return body;
}

// ---- charts ----

// A line chart of `series` ([{name, values, color}]) over the times `t` (unix ms), drawn as
// SVG, with a hover read-out of every series at the nearest point.
function lineChart(container, t, series, options = {}) {
  container.replaceChildren();
  // The legend goes under the plot, inside the container's height.
  const legend = series.length > 1 || options.legend
    ? el('div', { class: 'legend' }, series.map((s, index) => el('span', {},
      el('i', { style: `background:${cssVar(s.color || COLORS[index % COLORS.length])}` }), s.name)))
    : null;
  if (legend) container.append(legend);
  const width = container.clientWidth || 300;
  const height = Math.max(60, (container.clientHeight || 150) - (legend ? legend.offsetHeight + 4 : 0));
  const pad = { left: 44, right: 8, top: 8, bottom: 20 };
  const w = Math.max(10, width - pad.left - pad.right);
  const h = Math.max(10, height - pad.top - pad.bottom);
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, height, role: 'img', 'aria-label': options.label || 'chart' });
  container.prepend(root);
  const format = options.format || fmtNum;
  const points = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined && !Number.isNaN(v)));
  if (!t.length || !points.length) {
    root.append(svg('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'empty', text: 'No data in this range yet' }));
    container.dataset.empty = 'true';
    return;
  }
  container.dataset.empty = 'false';
  const t0 = t[0];
  const t1 = t.length > 1 ? t[t.length - 1] : t0 + 1;
  let max = Math.max(...points, options.min || 0);
  if (options.max !== undefined) max = Math.max(max, options.max);
  if (max <= 0) max = 1;
  const niceMax = niceCeil(max);
  const x = (time) => pad.left + ((time - t0) / (t1 - t0 || 1)) * w;
  const y = (v) => pad.top + h - (v / niceMax) * h;
  const axisFormat = options.format || ((v) => fmtAxis(v, niceMax));
  for (let i = 0; i <= 3; i += 1) {
    const v = (niceMax * i) / 3;
    root.append(svg('line', { class: 'gridline', x1: pad.left, x2: pad.left + w, y1: y(v), y2: y(v) }));
    root.append(svg('text', { class: 'axis', x: pad.left - 4, y: y(v) + 3, 'text-anchor': 'end', text: axisFormat(v) }));
  }
  const spanDays = (t1 - t0) > 86400000 * 1.5;
  const ticks = Math.max(2, Math.min(5, t.length, Math.floor(w / (spanDays ? 90 : 64))));
  for (let i = 0; i < ticks; i += 1) {
    const time = t0 + ((t1 - t0) * i) / Math.max(1, ticks - 1);
    root.append(svg('text', {
      class: 'axis', x: x(time), y: height - 4,
      'text-anchor': i === 0 ? 'start' : i === ticks - 1 ? 'end' : 'middle',
      text: fmtTime(time, spanDays),
    }));
  }
  series.forEach((s, index) => {
    const color = cssVar(s.color || COLORS[index % COLORS.length]);
    let d = '';
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined || Number.isNaN(v)) {
        pen = false;
        return;
      }
      d += (pen ? 'L' : 'M') + x(t[i]).toFixed(1) + ' ' + y(v).toFixed(1);
      pen = true;
    });
    if (options.area && series.length === 1) {
      const area = svg('path', { d: d + `L${x(t1)} ${y(0)}L${x(t0)} ${y(0)}Z`, fill: color, opacity: 0.12 });
      root.append(area);
    }
    root.append(svg('path', { d, fill: 'none', stroke: color, 'stroke-width': 1.6, 'stroke-linejoin': 'round' }));
    // Lone points (between gaps) are dots, so a sparse series still shows.
    s.values.forEach((v, i) => {
      const before = s.values[i - 1];
      const after = s.values[i + 1];
      if (v !== null && v !== undefined && (before === null || before === undefined) && (after === null || after === undefined)) {
        root.append(svg('circle', { cx: x(t[i]), cy: y(v), r: 2, fill: color }));
      }
    });
  });
  const cursor = svg('line', { class: 'cursor', y1: pad.top, y2: pad.top + h, visibility: 'hidden' });
  root.append(cursor);
  const tooltip = $('tooltip');
  root.addEventListener('pointermove', (event) => {
    const box = root.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * width;
    let nearest = 0;
    for (let i = 1; i < t.length; i += 1) if (Math.abs(x(t[i]) - px) < Math.abs(x(t[nearest]) - px)) nearest = i;
    cursor.setAttribute('x1', x(t[nearest]));
    cursor.setAttribute('x2', x(t[nearest]));
    cursor.setAttribute('visibility', 'visible');
    tooltip.replaceChildren(el('div', { class: 'muted' }, fmtTime(t[nearest], spanDays)),
      ...series.map((s, index) => el('div', {},
        el('i', { style: `background:${cssVar(s.color || COLORS[index % COLORS.length])}` }),
        `${s.name}: ${format(s.values[nearest] ?? null)}`)));
    tooltip.hidden = false;
    tooltip.style.left = Math.min(event.clientX + 12, window.innerWidth - 180) + 'px';
    tooltip.style.top = event.clientY + 12 + 'px';
  });
  root.addEventListener('pointerleave', () => {
    cursor.setAttribute('visibility', 'hidden');
    tooltip.hidden = true;
  });
}

// An axis label with as many decimals as the axis's scale needs.
function fmtAxis(value, max) {
  if (max >= 1000) return fmtNum(value);
  const decimals = Math.max(0, Math.min(6, 2 - Math.floor(Math.log10(max))));
  return value.toFixed(decimals);
}

function niceCeil(value) {
  const exponent = Math.floor(Math.log10(value));
  const base = 10 ** exponent;
  for (const step of [1, 1.5, 2, 3, 5, 10]) if (value <= step * base) return step * base;
  return 10 * base;
}

// ---- panels ----

function seriesOf(answer) {
  return (answer && answer.series && answer.series[0]) || null;
}

function timesOf(answer) {
  // Point times are unix seconds in the API; charts use milliseconds.
  return ((answer && answer.t) || []).map((v) => (v < 1e12 ? v * 1000 : v));
}

function renderTraffic(answer) {
  const t = timesOf(answer);
  const series = seriesOf(answer);
  const values = (series && series.values) || {};
  const col = (name) => values[name] || t.map(() => null);
  lineChart($('c-rps'), t, [{ name: 'requests/s', values: col('rps') }], { area: true, label: 'requests per second' });
  lineChart($('c-latency'), t, [
    { name: 'p50', values: col('p50') },
    { name: 'p95', values: col('p95') },
    { name: 'p99', values: col('p99') },
    { name: 'TTFT p50', values: col('ttft_p50') },
    { name: 'TTFT p95', values: col('ttft_p95') },
  ], { format: fmtMs, label: 'latency' });
  lineChart($('c-tokens'), t, [
    { name: 'tokens in', values: col('tokens_in') },
    { name: 'tokens out', values: col('tokens_out') },
  ], { label: 'tokens' });
  lineChart($('c-cost'), t, [{ name: 'cost', values: col('cost'), color: '--s3' }], { format: fmtUsd, area: true, legend: true, label: 'cost' });
  lineChart($('c-cache'), t, [{ name: 'cache hit rate', values: col('cache_hit_rate'), color: '--s5' }], { format: fmtPct, max: 1, area: true, legend: true, label: 'cache hit rate' });
  const totals = (series && series.totals) || {};
  $('k-requests').textContent = fmtNum(totals.requests);
  $('k-rps').textContent = `${fmtNum(totals.rps, 2)}/s`;
  $('k-p95').textContent = fmtMs(totals.p95);
  $('k-errors').textContent = fmtPct(totals.error_rate);
  $('k-cost').textContent = fmtUsd(totals.cost);
  $('k-cache').textContent = fmtPct(totals.cache_hit_rate);
}

function renderErrors(answer) {
  const t = timesOf(answer);
  const classes = ((answer && answer.series) || [])
    .filter((s) => s.group && s.group.status_class && s.group.status_class !== '2xx');
  const series = classes.map((s) => ({
    name: s.group.status_class,
    values: (s.values.rps || []).map((v) => v ?? 0),
    color: s.group.status_class === '5xx' ? '--s4' : '--s2',
  }));
  if (!series.length) series.push({ name: 'errors/s', values: t.map(() => 0), color: '--s4' });
  lineChart($('c-errors'), t, series, { legend: true, label: 'errors by class' });
}

// Refusals per point of the traffic chart's time axis, counted from the request log's 429s
// (the newest 1000 in the range).
function renderLimited(traffic, refusals) {
  const t = timesOf(traffic);
  const step = (traffic && traffic.interval_ms) || 60000;
  const counts = t.map(() => 0);
  for (const row of (refusals && refusals.data) || []) {
    const index = Math.floor((row.time_ms - t[0]) / step);
    if (index >= 0 && index < counts.length) counts[index] += 1;
  }
  lineChart($('c-limited'), t, [{ name: '429 refusals', values: counts, color: '--s2' }], { legend: true, label: 'rate-limit refusals' });
}

function facts(target, pairs) {
  target.replaceChildren(...pairs.flatMap(([name, value]) => [el('dt', {}, name), el('dd', {}, value)]));
}

function renderRateLimits(snapshot, refusals) {
  const limits = (snapshot && snapshot.limits) || [];
  const refused = ((refusals && refusals.data) || []).length;
  facts($('limit-facts'), [
    ['Refused (429) in range', refused >= 1000 ? '1000+' : fmtNum(refused)],
    ['Limits configured', limits.map((l) => l.name).join(', ') || 'none'],
    ['Store', (snapshot && snapshot.store) || 'memory'],
    ['In flight', fmtNum((snapshot && snapshot.in_flight) || 0)],
  ]);
  const top = (snapshot && snapshot.top_offenders) || [];
  const rows = top.slice(0, 5).map((row) => el('tr', {},
    el('td', {}, row.limit ? `${row.limit}: ${row.counter || row.key || ''}` : (row.counter || row.key || '')),
    el('td', { class: 'num' }, fmtNum(row.refusals ?? 0))));
  $('limit-top').replaceChildren(rows.length
    ? el('thead', {}, el('tr', {}, el('th', {}, 'Most refused'), el('th', { class: 'num' }, 'Refusals')))
    : '', el('tbody', {}, rows));
}

function renderCache(cache, savings) {
  const counters = (cache && cache.cache) || {};
  const pairs = [];
  if (cache && cache.enabled) {
    pairs.push(['Hit rate since start', fmtPct(counters.hit_rate)]);
    pairs.push(['Hits / misses', `${fmtNum(counters.hits)} / ${fmtNum(counters.misses)}`]);
    pairs.push(['Entries', `${fmtNum(counters.entries)} (${fmtNum(counters.bytes)} B)`]);
  } else {
    pairs.push(['Response cache', 'off']);
  }
  if (savings) {
    const total = savings.total || {};
    pairs.push(['Spent in range', fmtUsd(total.actual_usd)]);
    pairs.push(['Without routing, tiers or cache', fmtUsd(total.baseline_usd)]);
    pairs.push(['Saved by the cache', fmtUsd(total.cache_usd)]);
    pairs.push(['Saved by switching / tiers', `${fmtUsd(total.provider_switching_usd)} / ${fmtUsd(total.tiering_usd)}`]);
    pairs.push(['Saved in all', `${fmtUsd(total.saved_usd)} (${fmtPct(savings.saved_share)})`]);
  }
  facts($('cache-facts'), pairs);
}

function renderBudgets(report) {
  const target = $('budgets');
  const rows = [];
  for (const budget of (report && report.budgets) || []) {
    const members = budget.members && budget.members.length ? budget.members : [{ member: null, spent_usd: 0 }];
    for (const member of members) rows.push({ budget, member });
  }
  if (!rows.length) {
    target.replaceChildren(el('p', { class: 'muted' }, 'No budgets are configured.'));
    return;
  }
  target.replaceChildren(...rows.slice(0, 8).map(({ budget, member }) => {
    const amount = budget.amount_usd || 0;
    const spent = member.spent_usd || 0;
    const share = amount > 0 ? spent / amount : 0;
    const forecast = member.forecast_usd;
    const forecastShare = amount > 0 && forecast !== undefined && forecast !== null ? forecast / amount : null;
    const level = share >= 1 ? 'bad' : share >= 0.8 ? 'warn' : '';
    const name = budget.name + (member.member && member.member !== '*' ? ` · ${member.member}` : '');
    return el('div', { class: 'budget' },
      el('div', { class: 'head' }, el('b', {}, name), el('span', {}, `${fmtUsd(spent)} of ${fmtUsd(amount)} (${fmtPct(share)})`)),
      el('div', { class: 'track', title: forecastShare === null ? '' : `forecast ${fmtUsd(forecast)} by the period's end` },
        el('div', { class: `used ${level}`, style: `width:${Math.min(100, share * 100).toFixed(1)}%` }),
        forecastShare === null ? null : el('div', { class: 'forecast', style: `left:${Math.min(99.5, forecastShare * 100).toFixed(1)}%` })),
      el('div', { class: 'sub' }, `${budget.period || ''}${budget.action ? ' · ' + budget.action : ''}`
        + (forecastShare === null ? '' : ` · forecast ${fmtUsd(forecast)} (${fmtPct(forecastShare)})`)));
  }));
}

function pill(text, level) {
  return el('span', { class: `pill ${level}` }, text);
}

function renderProviders(report) {
  const table = $('providers');
  const head = el('thead', {}, el('tr', {},
    ['Provider', 'Model', 'State', 'Breaker', 'In flight', 'Requests', 'Errors', 'p50', 'p95', 'TTFT p95', 'Last error', '']
      .map((name, i) => el('th', { class: i >= 4 && i <= 9 ? 'num' : '' }, name))));
  const body = el('tbody');
  for (const provider of (report && report.providers) || []) {
    const targets = provider.targets && provider.targets.length ? provider.targets : [null];
    targets.forEach((target, index) => {
      const errors = target ? sum(Object.values(target.errors || {})) : 0;
      const unhealthy = provider.health_check && !provider.health_check.healthy;
      const stateCell = provider.drained ? pill('drained', 'muted') : unhealthy ? pill('failing check', 'bad') : pill('in rotation', 'good');
      const breaker = target ? target.breaker : '';
      const breakerCell = breaker === 'open' ? pill('open', 'bad') : breaker === 'half-open' ? pill('half-open', 'warn') : breaker ? pill(breaker, 'good') : '';
      const action = index === 0
        ? el('button', {
          type: 'button', class: provider.drained ? '' : 'danger',
          'data-provider': provider.name, 'data-action': provider.drained ? 'enable' : 'drain',
          onclick: () => setDrained(provider.name, !provider.drained),
        }, provider.drained ? 'Enable' : 'Drain')
        : '';
      body.append(el('tr', { 'data-provider': provider.name },
        el('td', {}, index === 0 ? el('b', {}, provider.name) : ''),
        el('td', {}, target ? target.model : el('span', { class: 'muted' }, 'no traffic yet')),
        el('td', {}, index === 0 ? stateCell : ''),
        el('td', {}, breakerCell),
        el('td', { class: 'num' }, target ? fmtNum(target.in_flight) : ''),
        el('td', { class: 'num' }, target ? fmtNum(target.requests) : ''),
        el('td', { class: 'num' }, target ? (target.requests ? `${fmtNum(errors)} (${fmtPct(errors / target.requests)})` : '0') : ''),
        el('td', { class: 'num' }, target ? fmtMs(target.latency_ms && target.latency_ms.p50) : ''),
        el('td', { class: 'num' }, target ? fmtMs(target.latency_ms && target.latency_ms.p95) : ''),
        el('td', { class: 'num' }, target ? fmtMs(target.ttft_ms && target.ttft_ms.p95) : ''),
        el('td', { class: 'muted', title: (target && target.last_error && target.last_error.message) || '' },
          target && target.last_error ? ago(target.last_error.at_unix * 1000) : ''),
        el('td', {}, action)));
    });
  }
  table.replaceChildren(head, body);
}

async function setDrained(name, drained) {
  try {
    await api(`/admin/providers/${encodeURIComponent(name)}/${drained ? 'drain' : 'enable'}`, { method: 'POST', body: {} });
  } catch (error) {
    showBanner(`Could not ${drained ? 'drain' : 'enable'} ${name}: ${error.message}`);
    return;
  }
  renderProviders(await api('/admin/providers').catch(() => null));
}

function renderSpend(report) {
  const lines = (report && report.lines) || [];
  const rows = lines
    .slice()
    .sort((a, b) => (b.cost_usd || 0) - (a.cost_usd || 0))
    .slice(0, 8)
    .map((line) => el('tr', {},
      el('td', {}, line.member ?? el('span', { class: 'muted' }, '(none)')),
      el('td', { class: 'num' }, fmtNum(line.requests ?? 0)),
      el('td', { class: 'num' }, fmtUsd(line.cost_usd))));
  $('spend').replaceChildren(
    el('thead', {}, el('tr', {}, el('th', {}, state.spendBy[0].toUpperCase() + state.spendBy.slice(1)), el('th', { class: 'num' }, 'Requests'), el('th', { class: 'num' }, 'Cost'))),
    el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 3, class: 'muted' }, 'No spend in this range'))));
}

function renderAlerts(report, error) {
  const target = $('alerts');
  if (error) {
    target.replaceChildren(el('p', { class: 'muted' }, error.status === 404 ? 'This gateway has no alerting.' : `Alerts unavailable: ${error.message}`));
    $('k-alerts').textContent = '–';
    return;
  }
  const firing = (report && report.firing) || [];
  const recent = ((report && report.recent) || []).filter((a) => !firing.some((f) => f.id === a.id)).slice(0, 8);
  $('k-alerts').textContent = String(firing.length);
  const item = (alert) => el('div', { class: `alert ${alert.state} ${alert.severity || ''}` },
    el('div', {}, el('b', {}, alert.rule), alert.member && alert.member !== '*' ? ` · ${alert.member}` : '', ' ',
      pill(alert.state, alert.state === 'firing' ? (alert.severity === 'critical' ? 'bad' : 'warn') : 'good')),
    el('div', {}, alert.message || ''),
    el('div', { class: 'when' }, alert.state === 'resolved' && alert.resolved_at
      ? `resolved ${ago(alert.resolved_at)} · fired ${ago(alert.started_at)}`
      : `since ${ago(alert.started_at)}`));
  const parts = [];
  parts.push(el('h3', { class: 'muted' }, `Firing (${firing.length})`));
  parts.push(...(firing.length ? firing.map(item) : [el('p', { class: 'muted' }, 'Nothing is firing.')]));
  parts.push(el('h3', { class: 'muted' }, 'Recent'));
  parts.push(...(recent.length ? recent.map(item) : [el('p', { class: 'muted' }, 'No recent alerts.')]));
  target.replaceChildren(...parts);
}

function requestFilters() {
  const form = new FormData($('filters'));
  const params = new URLSearchParams({ limit: '50' });
  for (const [name, value] of form.entries()) if (String(value).trim()) params.set(name, String(value).trim());
  return params;
}

function renderRequests(report) {
  state.requests = (report && report.data) || [];
  const head = el('thead', {}, el('tr', {},
    ['Time', 'Route', 'Provider', 'Model', 'Key', 'Status', 'Latency', 'TTFT', 'Tokens', 'Cost', 'Cache']
      .map((name, i) => el('th', { class: i >= 6 && i <= 9 ? 'num' : '' }, name))));
  const body = el('tbody');
  for (const row of state.requests) {
    const status = row.status >= 500 ? pill(String(row.status), 'bad') : row.status >= 400 ? pill(String(row.status), 'warn') : pill(String(row.status), 'good');
    const tr = el('tr', {
      'data-id': row.request_id,
      class: state.selected === row.request_id ? 'sel' : '',
      onclick: () => {
        state.selected = row.request_id;
        for (const other of body.children) other.classList.toggle('sel', other === tr);
        renderWaterfall(row);
      },
    },
    el('td', {}, fmtTime(row.time_ms, false)),
    el('td', {}, row.route || ''),
    el('td', {}, row.provider || ''),
    el('td', {}, row.model || ''),
    el('td', {}, row.key || ''),
    el('td', {}, status),
    el('td', { class: 'num' }, fmtMs(row.latency_us / 1000)),
    el('td', { class: 'num' }, row.ttft_us === null || row.ttft_us === undefined ? '–' : fmtMs(row.ttft_us / 1000)),
    el('td', { class: 'num' }, fmtNum((row.tokens_in || 0) + (row.tokens_out || 0))),
    el('td', { class: 'num' }, row.cost_usd === null || row.cost_usd === undefined ? '–' : fmtUsd(row.cost_usd)),
    el('td', {}, row.cache || ''));
    body.append(tr);
  }
  if (!state.requests.length) body.append(el('tr', {}, el('td', { colspan: 11, class: 'muted' }, 'No requests match.')));
  $('requests').replaceChildren(head, body);
  if (state.selected) {
    const row = state.requests.find((r) => r.request_id === state.selected);
    if (row) renderWaterfall(row);
  }
}

// The per-stage timing of one request: the stages ran in order, so each starts where the one
// before it ended.
function renderWaterfall(row) {
  const target = $('waterfall');
  const stages = normaliseStages(row.stages);
  const staged = sum(stages.map((s) => s.us));
  // What the stages do not cover is the answer's body reaching the client (a stream's
  // tokens after the first byte, for one).
  if ((row.latency_us || 0) - staged > 1000) stages.push({ name: 'body', us: row.latency_us - staged });
  const total = Math.max(row.latency_us || 0, staged, 1);
  let start = 0;
  const rows = stages.map((stage, index) => {
    const left = (start / total) * 100;
    const width = Math.max(0.3, (stage.us / total) * 100);
    start += stage.us;
    return el('div', { class: 'row' },
      el('span', {}, stage.name),
      el('div', { class: 'lane' }, el('div', { class: 'seg', style: `left:${left.toFixed(2)}%;width:${width.toFixed(2)}%;background:${cssVar(COLORS[index % COLORS.length])}` })),
      el('span', { class: 'num' }, stage.us >= 1000 ? fmtMs(stage.us / 1000) : `${stage.us} µs`));
  });
  target.hidden = false;
  target.replaceChildren(
    el('h3', {}, `Request ${row.request_id}`),
    el('div', { class: 'meta' }, `${row.route || ''} → ${row.provider || 'no provider'} ${row.model || ''} · status ${row.status}`
      + ` · ${fmtMs(row.latency_us / 1000)} total` + (row.attempts ? ` · ${row.attempts} attempt${row.attempts === 1 ? '' : 's'}` : '')
      + (row.error_class ? ` · ${row.error_class}` : '')),
    ...(rows.length ? rows : [el('p', { class: 'muted' }, 'No stage timings were recorded for this request.')]));
}

// `stages` is `[[name, microseconds], ...]` in the order the stages ran.
function normaliseStages(stages) {
  return (stages || []).map(([name, us]) => ({ name, us }));
}

// ---- refresh ----

function showBanner(text) {
  const banner = $('banner');
  banner.textContent = text;
  banner.hidden = !text;
}

async function refresh() {
  // A debounced filter, resize or range refresh may fire after signing out.
  if (state.refreshing || !state.signedIn) return;
  state.refreshing = true;
  const range = RANGES[state.range];
  const window = `from=${range.from}&interval=${range.interval}`;
  const calls = {
    traffic: api(`/admin/analytics?${window}&metrics=${METRICS}`),
    classes: api(`/admin/analytics?${window}&group_by=status_class&metrics=rps,requests`),
    refusals: api(`/admin/requests?status=429&limit=1000&from=${range.from}`),
    providers: api('/admin/providers'),
    ratelimits: api('/admin/ratelimits?top=5'),
    cache: api('/admin/cache'),
    savings: api(`/admin/cost/savings?from=${range.from}`),
    budgets: api('/admin/budgets'),
    spend: api(`/admin/spend?group_by=${state.spendBy}&from=${range.from}`),
    alerts: api('/admin/alerts'),
    requests: api(`/admin/requests?${requestFilters()}`),
  };
  const names = Object.keys(calls);
  const settled = await Promise.allSettled(Object.values(calls));
  const result = {};
  const errors = {};
  settled.forEach((outcome, i) => {
    if (outcome.status === 'fulfilled') result[names[i]] = outcome.value;
    else errors[names[i]] = outcome.reason;
  });
  state.refreshing = false;
  if (!state.signedIn) return;
  if (Object.values(errors).some((e) => e.status === 401 || e.status === 403)) {
    signOut('The admin key was refused; sign in again.');
    return;
  }
  const failed = Object.entries(errors).filter(([name, e]) => !(name === 'alerts' && e.status === 404));
  const problems = failed.length ? `Some panels could not be read: ${failed.map(([n, e]) => `${n} (${e.message})`).join('; ')}` : '';
  showBanner([state.notice, problems].filter(Boolean).join(' '));
  const draw = [
    () => result.traffic && renderTraffic(result.traffic),
    () => result.classes && renderErrors(result.classes),
    () => renderLimited(result.traffic, result.refusals),
    () => result.providers && renderProviders(result.providers),
    () => renderRateLimits(result.ratelimits, result.refusals),
    () => renderCache(result.cache, result.savings),
    () => result.budgets && renderBudgets(result.budgets),
    () => result.spend && renderSpend(result.spend),
    () => renderAlerts(result.alerts, errors.alerts),
    () => result.requests && renderRequests(result.requests),
  ];
  for (const step of draw) {
    try {
      step();
    } catch (error) {
      // A panel that cannot draw must not stop the others; the console keeps the cause.
      console.warn('panel failed to draw', error);
    }
  }
  $('updated').textContent = 'Updated ' + new Date().toLocaleTimeString();
  document.body.dataset.loaded = 'true';
}

function schedule() {
  clearInterval(state.timer);
  state.timer = null;
  if ($('live').checked && state.signedIn) state.timer = setInterval(refresh, REFRESH_MS);
}

// ---- sign-in ----

async function tryKey(key) {
  state.key = key;
  await api('/admin/providers');
}

function showBoard() {
  state.signedIn = true;
  $('signin').hidden = true;
  $('board').hidden = false;
  $('controls').hidden = false;
  refresh();
  schedule();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  state.signedIn = false;
  clearInterval(state.timer);
  $('board').hidden = true;
  $('controls').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message || '';
  $('admin-key').value = '';
  $('admin-key').focus();
}

async function start() {
  $('signin-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    // An empty key signs in to a gateway that has no master key.
    const key = $('admin-key').value.trim() || null;
    $('signin-error').textContent = '';
    try {
      await tryKey(key);
    } catch (error) {
      state.key = null;
      $('signin-error').textContent = error.status === 401 || error.status === 403
        ? 'That key was refused.' : `Could not sign in: ${error.message}`;
      return;
    }
    if (key === null) state.notice = 'This gateway has no master key: its admin API is open to anyone who can reach it.';
    else sessionStorage.setItem(KEY_STORE, key);
    $('admin-key').value = '';
    showBoard();
  });
  $('signout').addEventListener('click', () => signOut(''));
  $('live').addEventListener('change', schedule);
  for (const button of document.querySelectorAll('[data-range]')) {
    button.addEventListener('click', () => {
      state.range = button.dataset.range;
      for (const other of document.querySelectorAll('[data-range]')) other.classList.toggle('on', other === button);
      refresh();
    });
  }
  for (const button of document.querySelectorAll('[data-spend]')) {
    button.addEventListener('click', () => {
      state.spendBy = button.dataset.spend;
      for (const other of document.querySelectorAll('[data-spend]')) other.classList.toggle('on', other === button);
      refresh();
    });
  }
  let debounce = null;
  $('filters').addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(refresh, 300);
  });
  $('filters').addEventListener('submit', (event) => event.preventDefault());
  let resize = null;
  window.addEventListener('resize', () => {
    clearTimeout(resize);
    resize = setTimeout(refresh, 200);
  });

  // A key signed in with earlier in this tab is used again, if it still works.
  const stored = sessionStorage.getItem(KEY_STORE);
  if (stored) {
    try {
      await tryKey(stored);
      showBoard();
      return;
    } catch {
      // fall through to the sign-in form
    }
  }
  signOut('');
}

start();
