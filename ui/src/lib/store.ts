// Live resource data: list each kind, then follow `GET /api/v1/watch` (SSE read through
// fetch, so the bearer token can be sent) from the listed revision. The server's `since`
// is the last revision the client has seen: it replays every later change, so a
// reconnect with the last seen revision misses nothing. A stream that ends is resumed
// after a bounded exponential backoff; `compacted` (event or 410) means re-list.

import { ApiError, errorFrom, headers, type ListAnswer, type Resource } from './api';
import { SseParser } from './sse';

export const KIND_PLURALS: Record<string, string> = {
  Region: 'regions',
  Zone: 'zones',
  Unit: 'units',
  ShardMap: 'shardmaps',
  Cluster: 'clusters',
  Node: 'nodes',
  App: 'apps',
  Instance: 'instances',
  Artifact: 'artifacts',
  Release: 'releases',
  TrafficRule: 'trafficrules',
  DataSource: 'datasources',
  Certificate: 'certificates',
  User: 'users',
  Event: 'events',
};

export type Status = 'idle' | 'listing' | 'live' | 'retrying' | 'stopped';

export interface WatchEventData {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  revision: number;
  kind: string;
  name: string;
  object: Resource;
}

export interface StoreOptions {
  kinds: string[];
  token: () => string | null;
  fetch?: typeof fetch;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  onUnauthorized?: (message: string) => void;
}

type Listener = () => void;

export class ResourceStore {
  readonly kinds: string[];
  private data = new Map<string, Map<string, Resource>>();
  /** The last revision this store has seen everything up to. */
  revision = 0;
  status: Status = 'idle';
  error: string | null = null;
  /** Counters (diagnostics and tests). */
  lists = 0;
  connects = 0;
  private listeners = new Set<Listener>();
  private abort: AbortController | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private wake: (() => void) | null = null;
  private stopped = true;
  private readonly opts: StoreOptions;
  private readonly f: typeof fetch;

  constructor(opts: StoreOptions) {
    this.opts = opts;
    this.kinds = opts.kinds;
    this.f = opts.fetch ?? ((input, init) => fetch(input, init));
    for (const k of this.kinds) this.data.set(k, new Map());
  }

  /** Objects of one kind (plural), sorted by name. */
  list(kind: string): Resource[] {
    const m = this.data.get(kind);
    if (!m) return [];
    return Array.from(m.values()).sort((a, b) => (a.metadata.name < b.metadata.name ? -1 : a.metadata.name > b.metadata.name ? 1 : 0));
  }

  get(kind: string, name: string): Resource | undefined {
    return this.data.get(kind)?.get(name);
  }

  /** Whether the first list has arrived. */
  get loaded(): boolean {
    return this.lists > 0;
  }

  subscribe(f: Listener): () => void {
    this.listeners.add(f);
    return () => {
      this.listeners.delete(f);
    };
  }

  private notify(): void {
    for (const f of Array.from(this.listeners)) f();
  }

  private setStatus(s: Status, error: string | null = this.error): void {
    if (s !== this.status || error !== this.error) {
      this.status = s;
      this.error = error;
      this.notify();
    }
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.run();
  }

  stop(): void {
    this.stopped = true;
    this.abort?.abort();
    if (this.timer) clearTimeout(this.timer);
    this.wake?.();
    this.setStatus('stopped');
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
      this.timer = setTimeout(resolve, ms);
    });
  }

  backoff(attempt: number): number {
    const min = this.opts.minBackoffMs ?? 500;
    const max = this.opts.maxBackoffMs ?? 15000;
    return Math.min(max, min * Math.pow(2, Math.min(attempt, 20)));
  }

  private async run(): Promise<void> {
    let needList = true;
    let attempt = 0;
    while (!this.stopped) {
      try {
        if (needList) {
          await this.relist();
          needList = false;
        }
        const r = await this.watch();
        if (r.progressed) attempt = 0;
        if (r.compacted) {
          needList = true;
          continue;
        }
      } catch (e) {
        if (this.stopped) break;
        const err = e as ApiError;
        if (err.status === 401) {
          this.setStatus('stopped', err.message);
          this.stopped = true;
          this.opts.onUnauthorized?.(err.message);
          return;
        }
        if (err.status === 410 || err.code === 'compacted') {
          needList = true;
          continue;
        }
        this.error = err.message || String(e);
      }
      if (this.stopped) break;
      this.setStatus('retrying');
      await this.sleep(this.backoff(attempt));
      attempt++;
    }
  }

  /** Lists every kind and replaces the data with what is there now. */
  async relist(): Promise<void> {
    this.setStatus('listing');
    const ctl = new AbortController();
    this.abort = ctl;
    const answers = await Promise.all(
      this.kinds.map(async (k) => {
        const res = await this.f(`/api/v1/${k}`, { headers: headers(this.opts.token()), signal: ctl.signal, cache: 'no-store' });
        if (!res.ok) throw await errorFrom(res);
        return [k, (await res.json()) as ListAnswer] as const;
      }),
    );
    let rev = Infinity;
    for (const [k, a] of answers) {
      const m = new Map<string, Resource>();
      for (const o of a.items ?? []) m.set(o.metadata.name, o);
      this.data.set(k, m);
      rev = Math.min(rev, a.revision ?? 0);
    }
    this.revision = rev === Infinity ? 0 : rev;
    this.lists++;
    this.notify();
  }

  /** Applies one watch event (exported for tests). */
  apply(ev: WatchEventData): boolean {
    const plural = KIND_PLURALS[ev.kind] ?? ev.kind.toLowerCase() + 's';
    const m = this.data.get(plural);
    if (ev.revision > this.revision) this.revision = ev.revision;
    if (!m) return false;
    if (ev.type === 'DELETED') return m.delete(ev.name);
    m.set(ev.name, ev.object);
    return true;
  }

  private async watch(): Promise<{ compacted: boolean; progressed: boolean }> {
    const ctl = new AbortController();
    this.abort = ctl;
    const url = `/api/v1/watch?kinds=${this.kinds.join(',')}&since=${this.revision}&progress=true`;
    this.connects++;
    const res = await this.f(url, {
      headers: { ...headers(this.opts.token()), Accept: 'text/event-stream' },
      signal: ctl.signal,
      cache: 'no-store',
    });
    if (!res.ok) throw await errorFrom(res);
    if (!res.body) throw new ApiError(0, 'stream', 'the watch answer has no body');
    this.setStatus('live', null);
    const reader = res.body.getReader();
    const parser = new SseParser();
    let progressed = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        const events = done ? parser.end() : parser.push(value!);
        let changed = false;
        for (const e of events) {
          if (e.event === 'compacted') return { compacted: true, progressed };
          let d: WatchEventData;
          try {
            d = JSON.parse(e.data);
          } catch {
            continue;
          }
          progressed = true;
          if (e.event === 'PROGRESS') {
            if (d.revision > this.revision) this.revision = d.revision;
          } else if (e.event === 'ADDED' || e.event === 'MODIFIED' || e.event === 'DELETED') {
            changed = this.apply({ ...d, type: e.event }) || changed;
          }
        }
        if (changed) this.notify();
        if (done) return { compacted: false, progressed };
      }
    } finally {
      try {
        reader.cancel().catch(() => undefined);
      } catch {
        /* already closed */
      }
    }
  }
}
