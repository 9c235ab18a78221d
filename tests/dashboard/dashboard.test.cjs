// The dashboard in a real browser: headless Chromium, driven by playwright-core, against the
// gateway binary running `switchyard demo` (three simulated providers and background
// traffic). Run by scripts/dashboard-tests.sh, which provides:
//
//   SWITCHYARD_BIN            the gateway binary
//   SWITCHYARD_NODE_MODULES   node_modules holding playwright-core
//   CHROMIUM                  the browser (default /usr/bin/chromium)
//   DASHBOARD_ARTIFACTS       where the screenshots go
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { chromium } = require(path.join(process.env.SWITCHYARD_NODE_MODULES, 'playwright-core'));

const MASTER_KEY = 'sk-dashboard-test-' + Math.random().toString(36).slice(2);
const ARTIFACTS = process.env.DASHBOARD_ARTIFACTS || path.join(os.tmpdir(), 'switchyard-dashboard');

let gateway;
let base;
let browser;
let dataDir;

function startGateway() {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'switchyard-dashboard-'));
  const child = spawn(process.env.SWITCHYARD_BIN, ['demo', '--listen', '127.0.0.1:0'], {
    cwd: dataDir,
    env: { ...process.env, SWITCHYARD_MASTER_KEY: MASTER_KEY, SWITCHYARD_DATA_DIR: dataDir, RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the demo did not start in 30 s:\n${output}`)), 30000);
    const onData = (chunk) => {
      output += chunk;
      const match = output.match(/listening on (http:\/\/[0-9.:]+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ child, base: match[1] });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the demo exited with ${code}:\n${output}`));
    });
  });
}

async function call(route, options = {}) {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${MASTER_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: route,
      stream: Boolean(options.stream),
      messages: [{ role: 'user', content: options.prompt || `hello from the dashboard test ${route}` }],
    }),
  });
  await response.arrayBuffer();
  return response.status;
}

async function admin(pathAndQuery) {
  const response = await fetch(base + pathAndQuery, { headers: { authorization: `Bearer ${MASTER_KEY}` } });
  assert.equal(response.status, 200, `${pathAndQuery} answered ${response.status}`);
  return response.json();
}

async function until(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  ({ child: gateway, base } = await startGateway());
  // Traffic beyond the demo's own, so that every panel has data at once: every route, streams,
  // repeats for cache hits, and a burst over `quickest`'s limit for 429s.
  const routes = ['demo', 'fast', 'smart', 'quickest'];
  for (let round = 0; round < 3; round += 1) {
    await Promise.all(routes.map((route) => call(route, { stream: round === 1, prompt: `prompt ${round % 2}` })));
  }
  await Promise.all(Array.from({ length: 8 }, () => call('quickest')));
  // The 1 min rollups reach the store within a flush interval.
  await until('the analytics to show the traffic', async () => {
    const answer = await admin('/admin/analytics?from=-15m&interval=1m&metrics=requests');
    return answer.totals.requests >= 20;
  });
  await until('an alert in /admin/alerts', async () => {
    const alerts = await admin('/admin/alerts');
    return alerts.firing.length + alerts.recent.length > 0;
  }, 30000);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (gateway) {
    gateway.kill('SIGTERM');
    await new Promise((resolve) => gateway.once('exit', resolve));
  }
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

// A page that records every console error and uncaught exception.
async function openPage(viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  return { context, page, problems };
}

async function signIn(page, problems) {
  await page.goto(`${base}/dashboard`);
  await page.waitForSelector('#signin-form', { state: 'visible' });
  // A wrong key is refused on the form. The browser logs the 401 it got; nothing else may
  // be logged.
  await page.fill('#admin-key', 'not-the-key');
  await page.click('#signin-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('signin-error').textContent.includes('refused'));
  const refused = problems.splice(0);
  assert.ok(refused.every((p) => /status of 401/.test(p)), `unexpected: ${refused}`);
  await page.fill('#admin-key', MASTER_KEY);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('body[data-loaded=true]');
  assert.ok(!page.url().includes(MASTER_KEY), 'the key must never be in the URL');
  assert.equal((await page.context().cookies()).length, 0, 'no cookie holds the key');
}

test('every panel shows data after signing in', async () => {
  const { context, page, problems } = await openPage({ width: 1440, height: 900 });
  await signIn(page, problems);
  // Charts draw once their data is in.
  for (const chart of ['c-rps', 'c-latency', 'c-errors', 'c-tokens', 'c-cost', 'c-cache', 'c-limited']) {
    await page.waitForSelector(`#${chart}[data-empty=false] svg`, { state: 'attached', timeout: 15000 });
  }
  for (const tile of ['k-requests', 'k-rps', 'k-p95', 'k-errors', 'k-cost', 'k-cache', 'k-alerts']) {
    const text = (await page.textContent(`#${tile}`)).trim();
    assert.ok(text && text !== '–', `tile ${tile} is empty`);
  }
  // Providers: the three simulated ones, each with a drain button.
  assert.equal(await page.locator('#providers button[data-action=drain]').count(), 3);
  // Budgets, spend, cache and savings, rate limits, alerts, recent requests.
  assert.ok(await page.locator('#budgets .budget').count() >= 1, 'no budget shown');
  await page.waitForFunction(() => document.querySelectorAll('#spend tbody tr td.num').length > 0);
  assert.match(await page.textContent('#cache-facts'), /Saved in all/);
  await page.waitForFunction(() => /quickest-rpm/.test(document.getElementById('limit-facts').textContent));
  await page.waitForFunction(() => document.querySelectorAll('#limit-top tbody tr').length > 0);
  await page.waitForFunction(() => document.querySelectorAll('#alerts .alert').length > 0);
  await page.waitForFunction(() => document.querySelectorAll('#requests tbody tr[data-id]').length > 0);

  // A row opens its per-stage waterfall.
  await page.click('#requests tbody tr[data-id]');
  await page.waitForSelector('#waterfall:not([hidden]) .row .seg');
  assert.ok(await page.locator('#waterfall .row').count() >= 2, 'the waterfall shows the stages');

  // The time range changes what is asked for.
  await page.click('[data-range="24h"]');
  await page.waitForSelector('[data-range="24h"].on');
  await page.waitForSelector('#c-rps[data-empty=false] svg', { state: 'attached' });

  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-desktop.png'), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});

test('draining a provider changes the table and the routing', async () => {
  const { context, page, problems } = await openPage({ width: 1280, height: 900 });
  await signIn(page, problems);
  // `fast` has one target, on swift: answered before the drain, refused after it.
  assert.equal(await call('fast', { prompt: 'before the drain' }), 200);
  await page.click('#providers button[data-provider=swift][data-action=drain]');
  await page.waitForSelector('#providers button[data-provider=swift][data-action=enable]');
  const row = await page.textContent('#providers tr[data-provider=swift]');
  assert.match(row, /drained/);
  const providers = await admin('/admin/providers');
  assert.equal(providers.providers.find((p) => p.name === 'swift').drained, true);
  const drainedAt = Date.now();
  assert.equal(await call('fast', { prompt: 'after the drain' }), 503);
  // `demo` still answers, from the other providers.
  for (let i = 0; i < 4; i += 1) assert.equal(await call('demo', { prompt: `after the drain ${i}` }), 200);

  // The dashboard's request log shows it: filtered to `fast`, the newest is the 503.
  await page.fill('#filters input[name=route]', 'fast');
  await page.waitForFunction(() => {
    const first = document.querySelector('#requests tbody tr[data-id] td:nth-child(6)');
    return first && first.textContent.trim() === '503';
  }, null, { timeout: 15000 });
  // The log is written at each analytics flush (every second).
  const log = await until('the requests after the drain in the log', async () => {
    const page = await admin(`/admin/requests?route=demo&from=${Math.floor(drainedAt / 1000)}`);
    return page.data.length >= 4 && page;
  });
  assert.ok(log.data.every((r) => r.provider !== 'swift'), 'no request went to the drained provider');

  await page.click('#providers button[data-provider=swift][data-action=enable]');
  await page.waitForSelector('#providers button[data-provider=swift][data-action=drain]');
  assert.equal(await call('fast', { prompt: 'after enabling' }), 200);
  assert.deepEqual(problems, []);
  await context.close();
});

test('phone width', async () => {
  const { context, page, problems } = await openPage({ width: 390, height: 844 });
  // The page's timers (the debounced refresh after a resize) run when the test says, and
  // it counts its own fetches.
  await page.clock.install();
  await page.addInitScript(() => {
    const fetch = window.fetch;
    window.fetchCount = 0;
    window.fetch = (...args) => {
      window.fetchCount += 1;
      return fetch(...args);
    };
  });
  await signIn(page, problems);
  await page.waitForSelector('#c-rps[data-empty=false] svg', { state: 'attached' });
  await page.waitForFunction(() => document.querySelectorAll('#requests tbody tr[data-id]').length > 0);
  // One column: the page never scrolls sideways (wide tables scroll inside their card).
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than the phone`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-phone.png'), fullPage: true });
  // Signing out forgets the key.
  await page.click('#signout');
  await page.waitForSelector('#signin-form', { state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  // Signed out, nothing is fetched: neither the refresh a resize schedules nor the live one.
  const fetches = () => page.evaluate(() => window.fetchCount);
  const before = await fetches();
  await page.evaluate(() => window.dispatchEvent(new Event('resize')));
  await page.clock.runFor(6000);
  assert.equal(await fetches(), before);
  assert.deepEqual(problems, []);
  await context.close();
});
