// End-to-end test of the Cloudflare Worker build (crates/switchyard-worker) on workerd:
// `wrangler dev --local` serves the built Worker, with two mock providers (switchyard-mock)
// on loopback. Run by scripts/worker-tests.sh, which builds everything first and sets:
//   SWITCHYARD_MOCK_BIN  the switchyard-mock binary
//   WORKER_DIR           crates/switchyard-worker (its build/worker/shim.mjs must exist)
//   WRANGLER_BIN         wrangler 4.x
//   WORKER_TEST_LOG      (optional) where the children's output is written at the end
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";

const MASTER = "e2e-master-key";
const VIRTUAL = "sk-sy-" + "e2eVirtualKeyForTheWorkerTest0123456789abcd";
const children = [];
let dir;
let gateway;
let alpha;
let beta;
let logs = "";

function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.unref();
    server.on("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

function start(command, args, env = {}) {
  const child = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  child.stdout.on("data", (d) => (logs += d));
  child.stderr.on("data", (d) => (logs += d));
  children.push(child);
  return child;
}

// Runs `wrangler d1 execute DB --local` with the given arguments. The statements are
// idempotent, so a failed run is tried again (up to three runs): wrangler's local D1 goes
// through miniflare's proxy to a workerd of its own, which once failed in CI with a bare
// assertion ("false == true") and nothing else. Runs log at debug level, so that a failure
// carries wrangler's stack trace (on its standard output).
async function seedD1(wrangler, args) {
  const failures = [];
  for (let run = 1; run <= 3; run++) {
    try {
      await promisify(execFile)(wrangler, ["d1", "execute", "DB", "--local", "--yes", ...args], {
        cwd: dir,
        env: { ...process.env, WRANGLER_LOG: "debug" },
        maxBuffer: 16 << 20,
      });
      if (failures.length > 0) console.error(`wrangler d1 execute passed on run ${run} after:\n${failures.join("\n")}`);
      return;
    } catch (error) {
      const stdout = String(error.stdout ?? "").slice(-3000);
      failures.push(`wrangler d1 execute, run ${run}: ${error.message}\n(the end of its output:)\n${stdout}`);
    }
  }
  throw new Error(failures.join("\n"));
}

async function waitFor(url, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const response = await fetch(url);
      if (response.status < 500) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${url} did not answer in ${timeoutMs} ms:\n${logs.slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function post(body, key = MASTER, headers = {}) {
  return fetch(`${gateway}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

const ask = (model, text, extra = {}) => ({
  model,
  messages: [{ role: "user", content: text }],
  ...extra,
});

// The content of the first choice of an SSE answer.
function streamed(text) {
  return text
    .split("\n\n")
    .filter((frame) => frame.startsWith("data: ") && !frame.includes("[DONE]"))
    .map((frame) => JSON.parse(frame.slice(6)).choices?.[0]?.delta?.content ?? "")
    .join("");
}

async function calls(mock) {
  return (await (await fetch(`${mock}/__mock/calls`)).json()).calls;
}

before(async () => {
  const [alphaPort, betaPort, port, inspector] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  alpha = `http://127.0.0.1:${alphaPort}`;
  beta = `http://127.0.0.1:${betaPort}`;
  gateway = `http://127.0.0.1:${port}`;
  const mock = process.env.SWITCHYARD_MOCK_BIN;
  start(mock, ["--listen", `127.0.0.1:${alphaPort}`, "--name", "alpha"]);
  start(mock, ["--listen", `127.0.0.1:${betaPort}`, "--name", "beta"]);

  dir = mkdtempSync(join(tmpdir(), "switchyard-worker-e2e-"));
  const config = `
[[providers]]
name = "alpha"
kind = "openai"
base_url = "${alpha}/v1"
api_key_env = "ALPHA_KEY"

[[providers]]
name = "beta"
kind = "openai"
base_url = "${beta}/v1"
api_key_env = "BETA_KEY"

[[routes]]
model = "chat"
targets = [{ provider = "alpha", model = "m" }]

[[routes]]
model = "failover"
targets = [{ provider = "beta", model = "m", priority = 0 }, { provider = "alpha", model = "m", priority = 1 }]

[[routes]]
model = "cached"
targets = [{ provider = "alpha", model = "m" }]
[routes.cache]
enabled = true
ttl = "5m"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "${alpha}"
api_key_env = "ALPHA_KEY"

[[providers]]
name = "gem"
kind = "gemini"
base_url = "${alpha}"
api_key_env = "ALPHA_KEY"

[[routes]]
model = "claude"
targets = [{ provider = "claude", model = "claude-test" }]

[[routes]]
model = "gemini"
targets = [{ provider = "gem", model = "gemini-test" }]

[[routes]]
model = "embed"
targets = [{ provider = "alpha", model = "embedder" }]

[[routes]]
model = "slow"
targets = [{ provider = "beta", model = "m", priority = 0, timeouts = { first_byte = "300ms" } }, { provider = "alpha", model = "m", priority = 1 }]

[[routes]]
model = "quickest"
strategy = "least-latency"
targets = [{ provider = "beta", model = "m" }, { provider = "alpha", model = "m" }]

[[routes]]
model = "limited"
targets = [{ provider = "alpha", model = "m" }]

[[rate_limits.limits]]
name = "limited-per-key"
scope = "key"
requests = 2
per = "1m"
only = ["limited"]
`;
  const workerDir = resolve(process.env.WORKER_DIR);
  writeFileSync(
    join(dir, "wrangler.toml"),
    `name = "switchyard-e2e"
main = "${join(workerDir, "build", "worker", "shim.mjs")}"
compatibility_date = "2025-06-01"

[vars]
SWITCHYARD_MASTER_KEY = "${MASTER}"
ALPHA_KEY = "alpha-key"
BETA_KEY = "beta-key"
SWITCHYARD_CONFIG_TOML = '''${config}'''

[[kv_namespaces]]
binding = "CACHE"
id = "e2e-cache"

[[d1_databases]]
binding = "DB"
database_name = "e2e"
database_id = "00000000-0000-0000-0000-000000000000"

[durable_objects]
bindings = [{ name = "RATE_LIMITER", class_name = "RateLimiter" }]

[[migrations]]
tag = "v1"
new_sqlite_classes = ["RateLimiter"]
`,
  );
  const wrangler = process.env.WRANGLER_BIN;
  const common = ["--config", join(dir, "wrangler.toml"), "--persist-to", join(dir, "state")];
  // A virtual key, stored as the native gateway stores it: only the secret's SHA-256. The
  // schema and the key go in with one `wrangler d1 execute` (see seedD1).
  const hash = createHash("sha256").update(VIRTUAL).digest("hex");
  const now = Date.now();
  const settings = JSON.stringify({ name: "e2e", models: ["chat"] }).replaceAll("'", "''");
  const seed = join(dir, "seed.sql");
  writeFileSync(
    seed,
    readFileSync(join(workerDir, "schema.sql"), "utf8") +
      `\nINSERT OR REPLACE INTO keys VALUES ('key_e2e', '${hash}', 'sk-sy-e2eV…abcd', '${settings}', ${now}, ${now}, NULL);\n`,
  );
  await seedD1(wrangler, [...common, "--file", seed]);
  start(
    wrangler,
    ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector), ...common],
    { CI: "true" },
  );
  await waitFor(`${alpha}/__mock/calls`, 30_000);
  await waitFor(`${beta}/__mock/calls`, 30_000);
  await waitFor(`${gateway}/healthz`, 180_000);
});

after(() => {
  // What the mocks and wrangler printed, for a failed run (scripts/worker-tests.sh shows it).
  if (process.env.WORKER_TEST_LOG) writeFileSync(process.env.WORKER_TEST_LOG, logs);
  for (const child of children) {
    try {
      process.kill(-child.pid, "SIGTERM");
    } catch {}
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("a chat completion is served by the route's provider, with the gateway's headers", async () => {
  const response = await post(ask("chat", "hello worker"));
  const body = await response.json();
  assert.equal(response.status, 200, JSON.stringify(body));
  assert.match(body.choices[0].message.content, /alpha says: hello worker/);
  assert.equal(response.headers.get("x-switchyard-provider"), "alpha");
  assert.equal(response.headers.get("x-switchyard-route"), "chat");
  assert.equal(response.headers.get("x-switchyard-attempts"), "1");
  assert.ok(response.headers.get("x-switchyard-cost-usd"));
  assert.match(response.headers.get("x-request-id"), /^[0-9a-f]{32}$/);
  // Each stage's time, as the native gateway reports it.
  const timing = response.headers.get("server-timing");
  for (const stage of ["auth", "parse", "route", "upstream", "total"]) {
    assert.match(timing, new RegExp(`${stage};dur=\\d+\\.\\d{3}`), timing);
  }
});

test("a stream is passed through as server-sent events up to [DONE]", async () => {
  const response = await post(ask("chat", "stream please", { stream: true }));
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /text\/event-stream/);
  const text = await response.text();
  const chunks = text
    .split("\n\n")
    .filter((frame) => frame.startsWith("data: ") && !frame.includes("[DONE]"))
    .map((frame) => JSON.parse(frame.slice(6)));
  const content = chunks.map((c) => c.choices?.[0]?.delta?.content ?? "").join("");
  assert.match(content, /alpha says: stream please/);
  assert.ok(text.trimEnd().endsWith("data: [DONE]"), text.slice(-200));
});

test("a failing first provider fails over to the second", async () => {
  const set = await fetch(`${beta}/__mock/behavior`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ error_status: 503 }),
  });
  assert.equal(set.status, 200);
  const before = await calls(beta);
  const response = await post(ask("failover", "are you there"));
  const body = await response.json();
  assert.equal(response.status, 200, JSON.stringify(body));
  assert.equal(response.headers.get("x-switchyard-provider"), "alpha");
  assert.equal(response.headers.get("x-switchyard-attempts"), "2");
  assert.equal((await calls(beta)) - before, 1, "beta was tried first");
});

test("least-latency moves to the provider that answers faster", async () => {
  const slow = await fetch(`${beta}/__mock/behavior`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ latency_ms: 700 }),
  });
  assert.equal(slow.status, 200);
  const served = [];
  for (let i = 0; i < 5; i += 1) {
    const response = await post(ask("quickest", `which is quicker ${i}`));
    assert.equal(response.status, 200, await response.clone().text());
    served.push(response.headers.get("x-switchyard-provider"));
  }
  // An untried target ranks at 500 ms: once beta has shown 700 ms, alpha is tried and kept.
  assert.deepEqual(served.slice(-3), ["alpha", "alpha", "alpha"], served.join(","));
  await fetch(`${beta}/__mock/behavior`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({}),
  });
});

test("a provider slower than its first-byte timeout fails over", async () => {
  const set = await fetch(`${beta}/__mock/behavior`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ latency_ms: 3000 }),
  });
  assert.equal(set.status, 200);
  const started = Date.now();
  const response = await post(ask("slow", "quick now"));
  assert.equal(response.status, 200, await response.clone().text());
  assert.equal(response.headers.get("x-switchyard-provider"), "alpha");
  assert.equal(response.headers.get("x-switchyard-attempts"), "2");
  assert.ok(Date.now() - started < 2500, "the slow provider was abandoned");
});

test("Anthropic and Gemini providers are translated both ways, JSON and stream", async () => {
  for (const model of ["claude", "gemini"]) {
    const response = await post(ask(model, `hi ${model}`));
    const body = await response.json();
    assert.equal(response.status, 200, JSON.stringify(body));
    assert.equal(body.object, "chat.completion");
    assert.match(body.choices[0].message.content, new RegExp(`hi ${model}`));
    assert.ok(body.usage.prompt_tokens > 0);
    const stream = await post(ask(model, `stream ${model}`, { stream: true, stream_options: { include_usage: true } }));
    assert.equal(stream.status, 200);
    const text = await stream.text();
    const chunks = text
      .split("\n\n")
      .filter((frame) => frame.startsWith("data: ") && !frame.includes("[DONE]"))
      .map((frame) => JSON.parse(frame.slice(6)));
    const content = chunks.map((c) => c.choices?.[0]?.delta?.content ?? "").join("");
    assert.match(content, new RegExp(`stream ${model}`));
    assert.ok(chunks.some((c) => c.usage), "the usage chunk was asked for");
    assert.ok(text.trimEnd().endsWith("data: [DONE]"));
  }
});

test("embeddings go through the same path", async () => {
  const response = await fetch(`${gateway}/v1/embeddings`, {
    method: "POST",
    headers: { authorization: `Bearer ${MASTER}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "embed", input: ["one", "two"] }),
  });
  const body = await response.json();
  assert.equal(response.status, 200, JSON.stringify(body));
  assert.equal(body.data.length, 2);
  assert.ok(body.data[0].embedding.length > 0);
  assert.equal(response.headers.get("x-switchyard-provider"), "alpha");
});

test("the Durable Object limiter refuses past the limit with a 429", async () => {
  for (let i = 0; i < 2; i++) {
    const response = await post(ask("limited", `n${i}`));
    assert.equal(response.status, 200, await response.text());
    assert.ok(response.headers.get("x-ratelimit-remaining-requests") !== null);
  }
  const before = await calls(alpha);
  const refused = await post(ask("limited", "one too many"));
  const body = await refused.json();
  assert.equal(refused.status, 429, JSON.stringify(body));
  assert.equal(body.error.code, "rate_limit_exceeded");
  assert.match(body.error.message, /limited-per-key/);
  assert.ok(Number(refused.headers.get("retry-after")) >= 1);
  assert.equal(await calls(alpha), before, "a 429 uses no provider quota");
});

test("an identical request is answered from the cache", async () => {
  const first = await post(ask("cached", "cache me", { temperature: 0 }));
  assert.equal(first.status, 200, await first.clone().text());
  assert.equal(first.headers.get("x-switchyard-cache"), "MISS");
  const firstBody = await first.json();
  // KV writes land after the response (waitUntil): allow them a moment.
  let second;
  let upstreamCalls;
  for (let i = 0; i < 40; i++) {
    const before = await calls(alpha);
    second = await post(ask("cached", "cache me", { temperature: 0 }));
    if (second.headers.get("x-switchyard-cache") === "HIT") {
      upstreamCalls = (await calls(alpha)) - before;
      break;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(second.headers.get("x-switchyard-cache"), "HIT");
  assert.equal(upstreamCalls, 0, "a hit goes nowhere upstream");
  assert.equal(second.headers.get("x-switchyard-cost-usd"), "0");
  assert.deepEqual(await second.json(), firstBody);
});

test("a streamed answer is cached and replayed, as a stream or as JSON", async () => {
  const first = await post(ask("cached", "stream me once", { stream: true }));
  assert.equal(first.headers.get("x-switchyard-cache"), "MISS");
  assert.match(streamed(await first.text()), /alpha says: stream me once/);
  let again;
  for (let i = 0; i < 40; i++) {
    again = await post(ask("cached", "stream me once", { stream: true }));
    if (again.headers.get("x-switchyard-cache") === "HIT") break;
    await again.text();
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(again.headers.get("x-switchyard-cache"), "HIT");
  assert.match(again.headers.get("content-type"), /text\/event-stream/);
  assert.match(streamed(await again.text()), /alpha says: stream me once/);
  const json = await post(ask("cached", "stream me once"));
  assert.equal(json.headers.get("x-switchyard-cache"), "HIT");
  assert.match((await json.json()).choices[0].message.content, /stream me once/);
});

test("virtual keys authenticate by their hash and are held to their models", async () => {
  const ok = await post(ask("chat", "from a virtual key"), VIRTUAL);
  assert.equal(ok.status, 200, await ok.clone().text());
  const forbidden = await post(ask("cached", "not mine"), VIRTUAL);
  assert.equal(forbidden.status, 403);
  const unknown = await post(ask("chat", "who"), VIRTUAL.slice(0, -1) + "X");
  assert.equal(unknown.status, 401);
  assert.equal((await unknown.json()).error.type, "authentication_error");
  const models = await fetch(`${gateway}/v1/models`, { headers: { authorization: `Bearer ${MASTER}` } });
  const ids = (await models.json()).data.map((m) => m.id);
  assert.ok(ids.includes("chat") && ids.includes("failover"), ids.join(","));
});

test("request events reach D1 and the analytics API", async () => {
  let answer;
  for (let i = 0; i < 60; i++) {
    const response = await fetch(
      `${gateway}/admin/analytics?from=-1h&group_by=route&metrics=requests,errors,cache_hits`,
      { headers: { authorization: `Bearer ${MASTER}` } },
    );
    assert.equal(response.status, 200, await response.clone().text());
    answer = await response.json();
    const routes = new Map(answer.series.map((s) => [s.group.route, s.totals]));
    if (routes.get("limited")?.errors >= 1 && routes.get("cached")?.cache_hits >= 1 && routes.has("failover")) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const routes = new Map(answer.series.map((s) => [s.group.route, s.totals]));
  assert.ok(answer.totals.requests >= 8, JSON.stringify(answer.totals));
  assert.equal(routes.get("limited").errors, 1);
  assert.ok(routes.get("cached").cache_hits >= 1);
  const denied = await fetch(`${gateway}/admin/analytics`, { headers: { authorization: `Bearer ${VIRTUAL}` } });
  assert.equal(denied.status, 403);
});
