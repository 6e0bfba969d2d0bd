// The e2e suite's fixtures: a real `tessera up --demo` on 127.0.0.202 serving the
// console, and headless Chromium through playwright-core.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const IP = '127.0.0.202';
export const CONTROL = `http://${IP}:7400`;
export const GATEWAY = `http://${IP}:8080`;
export const BIN = process.env.TESSERA_BIN || '/var/cache/tessera/target/x86_64-unknown-linux-gnu/release/tessera';
export const DIST = fileURLToPath(new URL('../dist/', import.meta.url));

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `f` until it returns a truthy value, or fails after `ms`. */
export async function until(what, ms, f, every = 250) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(every);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

export class Tessera {
  /** consoleDir: have tessera serve this directory as the console (development). */
  constructor(consoleDir = null) {
    this.consoleDir = consoleDir;
    this.dataDir = mkdtempSync(join(tmpdir(), 'tessera-e2e-'));
    this.log = [];
    this.proc = null;
    this.token = null;
  }

  start() {
    if (!existsSync(BIN)) throw new Error(`no tessera binary at ${BIN} (set TESSERA_BIN)`);
    const set = {
      'control.listen': `${IP}:7400`,
      'control.peer_listen': `${IP}:7401`,
      'agent.listen': `${IP}:7402`,
      'agent.instance_ip': IP,
      'gateway.admin_listen': `${IP}:7403`,
      'dbproxy.admin_listen': `${IP}:7404`,
      'gateway.listen': `${IP}:8080`,
      'dbproxy.listen': `${IP}:3307`,
    };
    const args = ['up', '--demo', '--data-dir', this.dataDir];
    if (this.consoleDir) set['control.console_dir'] = this.consoleDir;
    for (const [k, v] of Object.entries(set)) args.push('--set', `${k}=${v}`);
    this.proc = spawn(BIN, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    for (const s of [this.proc.stdout, this.proc.stderr]) s.on('data', (d) => this.log.push(String(d)));
    this.exited = new Promise((r) => this.proc.once('exit', r));
  }

  async ready() {
    await until('tessera /readyz', 60000, async () => {
      if (this.proc.exitCode !== null) throw new Error(`tessera exited: ${this.log.join('').slice(-2000)}`);
      return (await fetch(`${CONTROL}/readyz`)).ok;
    });
    this.token = await until('the admin token', 20000, () => {
      const p = join(this.dataDir, 'admin.token');
      return existsSync(p) && readFileSync(p, 'utf8').trim();
    });
    await until('the demo instances to be ready', 60000, async () => {
      const list = await this.api('/api/v1/instances');
      return list.items.length >= 2 && list.items.every((i) => i.status?.ready === true);
    });
  }

  async api(path, opts = {}) {
    const res = await fetch(CONTROL + path, {
      ...opts,
      headers: { Authorization: `Bearer ${opts.token ?? this.token}`, 'Content-Type': 'application/json', ...(opts.headers ?? {}) },
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** SIGTERM to the process group (tessera up stops its instances), SIGKILL if slow. */
  async stop() {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      try {
        process.kill(-this.proc.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
      const done = await Promise.race([this.exited.then(() => true), sleep(10000).then(() => false)]);
      if (!done) {
        try {
          process.kill(-this.proc.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        await Promise.race([this.exited, sleep(3000)]);
      }
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}


/** Whether tessera itself serves the console at `/`. */
export async function tesseraServesConsole() {
  const res = await fetch(`${CONTROL}/`, { headers: { Accept: 'text/html' } });
  return (res.headers.get('content-type') ?? '').includes('text/html');
}

export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'tessera-e2e-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1360, height: 900 },
    locale: 'en-US',
  });
  return {
    context,
    close: async () => {
      await context.close().catch(() => undefined);
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
