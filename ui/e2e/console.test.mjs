// End-to-end: a real tessera demo, the console in headless Chromium. See README.md.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BIN, CONTROL, DIST, GATEWAY, Tessera, launchBrowser, tesseraServesConsole, until } from './harness.mjs';

const ART = fileURLToPath(new URL('./artifacts/', import.meta.url));
mkdirSync(ART, { recursive: true });
const PAGES = ['overview', 'topology', 'apps', 'traffic', 'datasources', 'certificates', 'releases', 'events', 'audit'];
const UID = '2088000000000007';

let tessera, browser, page, consoleUrl, origin;
const requests = [];
const problems = [];

process.on('exit', () => {
  // Last resort if the run is torn down before `after` ran.
  if (tessera?.proc && tessera.proc.exitCode === null) {
    try {
      process.kill(-tessera.proc.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

before(async () => {
  // Which console: TESSERA_CONSOLE_URL; or TESSERA_CONSOLE=dir (this checkout's ui/dist,
  // served by tessera from disk through control.console_dir: for console development);
  // by default the console embedded in the binary, as users get it.
  const mode = process.env.TESSERA_CONSOLE_URL ? 'url' : process.env.TESSERA_CONSOLE === 'dir' ? 'console_dir' : 'embedded';
  tessera = new Tessera(mode === 'console_dir' ? DIST : null);
  tessera.start();
  await tessera.ready();
  if (mode === 'url') consoleUrl = process.env.TESSERA_CONSOLE_URL;
  else {
    assert.ok(await tesseraServesConsole(), 'tessera serves the console at /');
    consoleUrl = `${CONTROL}/`;
  }
  origin = new URL(consoleUrl).origin;
  console.log(`# console at ${consoleUrl} (${{ url: 'TESSERA_CONSOLE_URL', embedded: 'embedded in the binary', console_dir: 'ui/dist served by tessera (control.console_dir)' }[mode]}); binary ${BIN}`);
  browser = await launchBrowser();
  page = browser.context.pages()[0] ?? (await browser.context.newPage());
  page.setDefaultTimeout(15000);
  page.on('request', (r) => requests.push(r.url()));
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
}, { timeout: 200000 });

after(async () => {
  await browser?.close();
  await tessera?.stop();
}, { timeout: 30000 });

const shot = (name) => page.screenshot({ path: `${ART}${name}.png`, fullPage: true });
const tid = (id) => page.getByTestId(id);

async function gatewayRoutes(path) {
  const res = await fetch(GATEWAY + path, { headers: { 'x-tessera-uid': UID } });
  const body = await res.text();
  return res.status === 200 && body.includes('"app":"echo"');
}

async function walk(lang) {
  for (const p of PAGES) {
    await tid(`nav-${p}`).click();
    await tid(`page-${p}`).waitFor();
    if (p === 'topology') await page.locator('[data-testid="shardgrid-default"] .slot').nth(99).waitFor();
    if (p === 'apps') await tid('instance-echo-rz00-0').waitFor();
    await page.waitForTimeout(300);
    await shot(`${p}-${lang}`);
  }
  await tid('nav-apps').click();
  await tid('logs-link-echo').click();
  await logLine('listening on').waitFor();
  await until('the log answer', 15000, async () => (await tid('logs-status').getAttribute('data-state')) === 'done');
  await shot(`apps-logs-${lang}`);
  await tid('nav-traffic').click();
  await tid('open-echo').click();
  await tid('yaml-editor').waitFor();
  await shot(`traffic-editor-${lang}`);
}

/** A log line of the console's log view containing `text`. */
const logLine = (text) => page.locator('[data-testid="log-line"]', { hasText: text }).first();

/** The log lines shown: [{t, instance, text}]. */
const shownLines = () =>
  page.$$eval('[data-testid="log-line"]', (els) =>
    els.map((e) => ({ t: Number(e.getAttribute('data-t')), instance: e.getAttribute('data-instance'), text: e.querySelector('.log-text')?.textContent ?? '', marked: !!e.querySelector('mark') })),
  );

async function editorText() {
  return tid('yaml-editor').inputValue();
}

test('a wrong token shows the server message', { timeout: 60000 }, async () => {
  await page.goto(consoleUrl);
  await tid('signin-form').waitFor();
  await shot('signin-en');
  const server = await (await fetch(`${CONTROL}/api/v1`, { headers: { Authorization: 'Bearer wrong' } })).json();
  await tid('signin-token').fill('wrong');
  await tid('signin-submit').click();
  await assert.doesNotReject(tid('signin-error-message').waitFor());
  assert.equal(await tid('signin-error-message').textContent(), server.message);
});

test('signs in and walks every page', { timeout: 90000 }, async () => {
  await tid('signin-token').fill(tessera.token);
  await tid('signin-submit').click();
  await tid('page-overview').waitFor();
  assert.equal(await tid('header-role').getAttribute('data-role'), 'admin');
  await page.locator('[data-testid^="member-"]').first().waitFor();
  await until('live status', 15000, async () => (await tid('live-status').getAttribute('data-status')) === 'live');
  await walk('en');
  // Topology: the demo's shard map, 00-49 to rz00 and 50-99 to rz01.
  await tid('nav-topology').click();
  assert.equal(await page.locator('[data-slot="07"]').getAttribute('data-unit'), 'rz00');
  assert.equal(await page.locator('[data-slot="77"]').getAttribute('data-unit'), 'rz01');
  await tid('topo-unit-rz00').waitFor();
  // Apps: every demo instance running and ready; the honest log panel.
  await tid('nav-apps').click();
  for (const name of ['echo-rz00-0', 'echo-rz01-0']) {
    assert.equal(await tid(`instance-${name}`).getAttribute('data-ready'), 'true');
    assert.equal(await tid(`instance-${name}`).getAttribute('data-phase'), 'running');
  }
  assert.equal(await tid('logs-link-echo').getAttribute('href'), '/apps/echo/logs');
  // Audit: the accepted writes of the demo's setup are listed.
  await tid('nav-audit').click();
  await page.locator('[data-testid^="audit-"][data-testid$="1"]').first().waitFor();
  // Verify chain: the server's verdict (or, on a server without the endpoint, its refusal).
  await tid('audit-verify').click();
  await page.locator('[data-testid="audit-verify-result"], [data-testid="audit-verify-error"]').first().waitFor();
  if (await tid('audit-verify-result').count()) {
    // The console shows the server's verdict as it is (not the console's to judge).
    const verdict = await tessera.api('/api/v1/auditevents/verify');
    assert.equal(await tid('audit-verify-result').getAttribute('data-ok'), String(verdict.ok));
    assert.equal(verdict.ok, true, `the audit chain verifies: ${JSON.stringify(verdict)}`);
  } else console.log(`# audit verify refused: ${await tid('audit-verify-error-message').textContent()}`);
  await shot('audit-verified-en');
});

test('editing the traffic rule as YAML reroutes the gateway, and back', { timeout: 90000 }, async () => {
  assert.ok(await gatewayRoutes('/'), 'before: / is routed');
  await tid('nav-traffic').click();
  await tid('open-echo').click();
  await tid('yaml-editor').waitFor();
  const original = await editorText();
  assert.match(original, /pathPrefix: \/\n/);
  await tid('yaml-editor').fill(original.replace('pathPrefix: /\n', 'pathPrefix: /shop\n'));
  await tid('save-button').click();
  await tid('editor-result').waitFor();
  await until('the gateway to route only /shop', 20000, async () => (await gatewayRoutes('/shop')) && !(await gatewayRoutes('/')));
  assert.match(await editorText(), /pathPrefix: \/shop\n/);
  await tid('yaml-editor').fill((await editorText()).replace('pathPrefix: /shop\n', 'pathPrefix: /\n'));
  await tid('save-button').click();
  await until('the saved answer', 10000, async () => /pathPrefix: \/\n/.test(await editorText()) && !(await tid('editor-dirty').count()));
  await until('the gateway to route / again', 20000, () => gatewayRoutes('/'));
});

test('an invalid edit shows the server field error and keeps the text', { timeout: 60000 }, async () => {
  const text = (await editorText()).replace(/(  routeBy: unit\n)/, '$1  foo: 1\n');
  assert.match(text, /foo: 1/);
  await tid('yaml-editor').fill(text);
  await tid('save-button').click();
  await tid('editor-error').waitFor();
  assert.match(await tid('editor-error-field').textContent(), /spec\.foo/);
  assert.match(await tid('editor-error-message').textContent(), /unknown field `foo`/);
  const line = text.split('\n').findIndex((l) => l.includes('foo: 1')) + 1;
  assert.equal(await tid('yaml-error-line').textContent(), String(line));
  assert.equal(await editorText(), text, 'the text is kept');
  await shot('traffic-editor-error-en');
  if (await tid('validate-button').isEnabled()) {
    await tid('validate-button').click();
    await tid('editor-error').waitFor();
    assert.equal(await editorText(), text);
  }
  page.once('dialog', (d) => d.accept());
  await tid('reset-button').click();
  await until('the reset', 10000, async () => !(await editorText()).includes('foo: 1'));
});

test('a killed instance goes not ready and comes back', { timeout: 90000 }, async () => {
  await tid('nav-apps').click();
  const row = tid('instance-echo-rz01-0');
  await row.waitFor();
  await page.evaluate(() => {
    const w = window;
    w.__ready = [];
    new MutationObserver((ms) => {
      for (const m of ms) {
        const el = m.target;
        if (el.getAttribute && el.getAttribute('data-testid') === 'instance-echo-rz01-0') w.__ready.push(el.getAttribute('data-ready'));
      }
    }).observe(document.body, { attributes: true, subtree: true, attributeFilter: ['data-ready'] });
  });
  const inst = await tessera.api('/api/v1/instances/echo-rz01-0');
  const pid = inst.status.pid;
  assert.ok(pid > 1, 'a pid is reported');
  process.kill(pid, 'SIGKILL');
  await until('the row to show not ready', 20000, () => page.evaluate(() => window.__ready.includes('false')), 100);
  await until('the row to be ready again', 45000, async () => (await row.getAttribute('data-ready')) === 'true' && (await page.evaluate(() => window.__ready.includes('false'))));
  const after = await tessera.api('/api/v1/instances/echo-rz01-0');
  assert.ok(after.status.restarts >= 1 || after.status.pid !== pid, 'restarted');
});

test("the echo app's logs: a line, a search, a refusal, and Follow sees a new line", { timeout: 150000 }, async () => {
  // The server's own answer first (tells a server problem from a console one).
  const res = await fetch(`${CONTROL}/api/v1/logs?app=echo&grep=listening`, { headers: { Authorization: `Bearer ${tessera.token}` } });
  const body = await res.text();
  assert.equal(res.status, 200, `GET /api/v1/logs: ${body}`);
  assert.match(res.headers.get('content-type') ?? '', /application\/x-ndjson/);
  const records = body.split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((r) => r.line !== undefined);
  assert.ok(records.some((r) => r.instance === 'echo-rz00-0' && /listening on /.test(r.line)), `a listening line of echo-rz00-0 in ${body.slice(0, 2000)}`);

  // Opened from the Apps page; the instance's output is there.
  await tid('nav-apps').click();
  await tid('logs-link-echo').click();
  await tid('logs-panel').waitFor();
  assert.match(page.url(), /\/apps\/echo\/logs$/);
  await logLine('listening on').waitFor();
  // A deep link to the same view works (the SPA fallback and the router).
  await page.goto(new URL('/apps/echo/logs?unit=rz00', consoleUrl).toString());
  await logLine('listening on').waitFor();
  assert.equal(await tid('logs-unit').inputValue(), 'rz00');
  await until('rz00 lines only', 15000, async () => {
    const lines = await shownLines();
    return lines.length > 0 && lines.every((l) => l.instance === '' || l.instance.startsWith('echo-rz00-'));
  });

  // A search: sent to the server (grep), the match highlighted.
  const logRequests = [];
  const onRequest = (r) => r.url().includes('/api/v1/logs?') && logRequests.push(r.url());
  page.on('request', onRequest);
  await tid('logs-grep').fill('listening on 127\\.0\\.0\\.202');
  await until('the search to reach the server', 15000, () => logRequests.some((u) => new URL(u).searchParams.get('grep') === 'listening on 127\\.0\\.0\\.202'));
  await until('the search answer', 15000, async () => (await tid('logs-status').getAttribute('data-state')) === 'done');
  let lines = await shownLines();
  assert.ok(lines.length > 0, 'some lines match');
  assert.ok(lines.every((l) => /listening on 127\.0\.0\.202/.test(l.text) && l.marked), JSON.stringify(lines.slice(0, 5)));

  // A pattern the server refuses: its message and field, as the server words them.
  const bad = await (await fetch(`${CONTROL}/api/v1/logs?app=echo&grep=${encodeURIComponent('listening(')}`, { headers: { Authorization: `Bearer ${tessera.token}` } })).json();
  await tid('logs-grep').fill('listening(');
  await tid('logs-error').waitFor();
  assert.equal(await tid('logs-error-message').textContent(), bad.message);
  assert.match(await tid('logs-error-field').textContent(), /grep/);
  assert.equal(bad.field, 'grep');

  // Follow, on one instance: a killed process is restarted and says `listening on` again.
  await tid('logs-grep').fill('listening on');
  await tid('logs-instance').selectOption('echo-rz00-0');
  await until('the filtered answer', 15000, async () => (await tid('logs-status').getAttribute('data-state')) === 'done' && (await shownLines()).length > 0);
  await tid('logs-follow').check();
  await until('following', 15000, async () => (await tid('logs-status').getAttribute('data-state')) === 'following');
  assert.match(page.url(), /follow=true/);
  await until('the followed backlog', 15000, async () => (await shownLines()).length > 0);
  const before = await shownLines();
  const lastT = Math.max(...before.map((l) => l.t));
  const inst = await tessera.api('/api/v1/instances/echo-rz00-0');
  const pid = inst.status.pid;
  assert.ok(pid > 1, 'a pid is reported');
  const killedAt = Date.now();
  process.kill(pid, 'SIGKILL');
  await until('a new `listening on` line while following', 60000, async () => {
    const now = await shownLines();
    return now.length > before.length && now.some((l) => l.t > lastT && l.instance === 'echo-rz00-0' && /listening on 127\.0\.0\.202:\d+/.test(l.text));
  }, 500);
  lines = await shownLines();
  const fresh = lines.filter((l) => l.t > lastT);
  assert.ok(fresh.every((l) => l.t >= killedAt - 2000), `new lines are from after the kill: ${JSON.stringify(fresh)}`);
  assert.equal(await tid('logs-status').getAttribute('data-state'), 'following', 'the stream is still open');
  assert.ok(lines.every((l) => l.instance === 'echo-rz00-0'));
  await shot('apps-logs-follow-en');

  // Follow off: the streamed request is aborted, the lines stay.
  const aborted = new Promise((resolve) => {
    const onFailed = (r) => {
      if (r.url().includes('follow=true')) {
        page.off('requestfailed', onFailed);
        resolve(r.failure()?.errorText ?? 'failed');
      }
    };
    page.on('requestfailed', onFailed);
  });
  await tid('logs-follow').uncheck();
  const why = await Promise.race([aborted, new Promise((r) => setTimeout(() => r(null), 10000))]);
  assert.ok(why, 'the follow request was aborted');
  assert.equal(await tid('logs-status').getAttribute('data-state'), 'paused');
  assert.equal((await shownLines()).length, lines.length);
  page.off('request', onRequest);
  await until('echo-rz00-0 ready again', 60000, async () => (await tessera.api('/api/v1/instances/echo-rz00-0')).status?.ready === true, 500);
});

test('a certificate shows its hosts and how long it has left, never its key', { timeout: 60000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'e2e-cert-'));
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '10',
      '-subj', '/CN=shop.e2e.example', '-addext', 'subjectAltName=DNS:shop.e2e.example',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    const cert = readFileSync(join(dir, 'cert.pem'), 'utf8');
    const key = readFileSync(join(dir, 'key.pem'), 'utf8');
    await tessera.api('/api/v1/certificates/shop-e2e', {
      method: 'PUT',
      body: JSON.stringify({ apiVersion: 'tessera.io/v1', kind: 'Certificate', metadata: { name: 'shop-e2e' }, spec: { cert, key } }),
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  await tid('nav-certificates').click();
  await tid('row-shop-e2e').waitFor();
  const row = await tid('row-shop-e2e').textContent();
  assert.match(row, /shop\.e2e\.example/);
  assert.ok(!row.includes('PRIVATE KEY'), row);
  const expiry = tid('row-shop-e2e').locator('[data-testid="cert-expiry"]');
  const days = Number(await expiry.getAttribute('data-days'));
  assert.ok(days >= 8 && days <= 10, `days left: ${days}`);
  assert.match(await expiry.getAttribute('class'), /warn/, 'under 30 days is flagged');
  await shot('certificates-en');
  await tid('open-shop-e2e').click();
  await tid('yaml-editor').waitFor();
  const text = await editorText();
  assert.ok(!text.includes('PRIVATE KEY'), 'the key stays sealed in the editor');
  assert.match(text, /sealed/);
});

test('switches to 中文 and keeps the choice', { timeout: 90000 }, async () => {
  await tid('lang-switch').selectOption('zh-CN');
  await until('Chinese navigation', 5000, async () => (await tid('nav-overview').textContent()) === '概览');
  assert.equal(await tid('nav-apps').textContent(), '应用');
  await walk('zh');
  await tid('nav-apps').click();
  assert.equal(await tid('logs-link-echo').textContent(), '日志');
  await page.reload();
  await tid('nav-overview').waitFor();
  assert.equal(await tid('nav-overview').textContent(), '概览');
});

test('a viewer is offered no writes and sees the server refusal', { timeout: 60000 }, async () => {
  const viewer = await tessera.api('/api/v1/users', { method: 'POST', body: JSON.stringify({ name: 'e2e-viewer', role: 'viewer' }) });
  assert.ok(viewer.token);
  await tid('signout').click();
  await tid('signin-form').waitFor();
  await shot('signin-zh');
  await tid('lang-switch').selectOption('en');
  await tid('signin-token').fill(viewer.token);
  await tid('signin-submit').click();
  await tid('page-overview').waitFor();
  assert.equal(await tid('header-role').getAttribute('data-role'), 'viewer');
  assert.equal(await tid('nav-audit').count(), 0, 'audit is not offered');
  await tid('nav-traffic').click();
  await tid('readonly-note').waitFor();
  await tid('open-echo').click();
  await tid('yaml-editor').waitFor();
  assert.equal(await tid('save-button').count(), 0, 'no save for a viewer');
  assert.equal(await tid('yaml-editor').getAttribute('readonly'), '');
  // The audit trail by its address: the server's refusal, in its own words.
  await page.goto(new URL('/audit', consoleUrl).toString());
  await tid('audit-error').waitFor();
  assert.match(await tid('audit-error-message').textContent(), /may not read the audit trail/);
  await shot('audit-viewer-en');
});

test('every request went to the console origin, with no CSP violation', () => {
  assert.ok(requests.length > 10);
  const foreign = requests.filter((u) => !u.startsWith(origin + '/'));
  assert.deepEqual(foreign, []);
  assert.deepEqual(problems, []);
});
