// Collected log lines: `GET /api/v1/logs?app=…` answers NDJSON, each line a record or a
// node that could not be read. With follow=true the answer stays open and new lines
// arrive as the agents send them.

import { open } from './api';
import { NdjsonParser, readNdjson } from './ndjson';

export interface LogRecord {
  seq: number;
  /** ms since the epoch (when the agent read the line). */
  t: number;
  node: string;
  app: string;
  unit: string;
  instance?: string;
  /** `stdout`, `stderr`, or a path under the app's log directory. */
  file: string;
  line: string;
}

export interface LogProblem {
  node: string;
  error: string;
}

export type LogItem = { record: LogRecord } | { problem: LogProblem };

/** Sorts one parsed NDJSON object into a record or a problem; null for anything else. */
export function classify(v: Record<string, unknown>): LogItem | null {
  if (typeof v.error === 'string') {
    return { problem: { node: typeof v.node === 'string' ? v.node : '?', error: v.error } };
  }
  if (typeof v.line === 'string' && typeof v.t === 'number') {
    return {
      record: {
        seq: typeof v.seq === 'number' ? v.seq : 0,
        t: v.t,
        node: typeof v.node === 'string' ? v.node : '',
        app: typeof v.app === 'string' ? v.app : '',
        unit: typeof v.unit === 'string' ? v.unit : '',
        instance: typeof v.instance === 'string' ? v.instance : undefined,
        file: typeof v.file === 'string' ? v.file : '',
        line: v.line,
      },
    };
  }
  return null;
}

export type SinceChoice = '15m' | '1h' | '24h' | 'all';
export const SINCE_CHOICES: SinceChoice[] = ['15m', '1h', '24h', 'all'];
const SINCE_MS: Record<SinceChoice, number> = { '15m': 15 * 60e3, '1h': 3600e3, '24h': 86400e3, all: 0 };
export const LIMITS = [100, 500, 2000];
/** Lines kept in memory (the oldest go first). */
export const MAX_BUFFER = 2000;

export interface LogFilters {
  unit: string;
  instance: string;
  since: SinceChoice;
  grep: string;
  limit: number;
  follow: boolean;
}

export const DEFAULT_FILTERS: LogFilters = { unit: '', instance: '', since: 'all', grep: '', limit: 500, follow: false };

/** Filters from the page's query string (a deep link); unknown values fall back. */
export function filtersFrom(q: URLSearchParams): LogFilters {
  const since = q.get('since') as SinceChoice;
  const limit = Number(q.get('limit'));
  return {
    unit: q.get('unit') ?? '',
    instance: q.get('instance') ?? '',
    since: SINCE_CHOICES.indexOf(since) >= 0 ? since : DEFAULT_FILTERS.since,
    grep: q.get('grep') ?? '',
    limit: LIMITS.indexOf(limit) >= 0 ? limit : DEFAULT_FILTERS.limit,
    follow: q.get('follow') === 'true',
  };
}

/** The page's query string for these filters (defaults left out). */
export function filtersQuery(f: LogFilters): string {
  const q = new URLSearchParams();
  if (f.unit) q.set('unit', f.unit);
  if (f.instance) q.set('instance', f.instance);
  if (f.since !== DEFAULT_FILTERS.since) q.set('since', f.since);
  if (f.grep) q.set('grep', f.grep);
  if (f.limit !== DEFAULT_FILTERS.limit) q.set('limit', String(f.limit));
  if (f.follow) q.set('follow', 'true');
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** The API address for an app's logs with these filters; `since` is relative to `now`. */
export function logsUrl(app: string, f: LogFilters, now = Date.now()): string {
  const q = new URLSearchParams();
  q.set('app', app);
  if (f.unit) q.set('unit', f.unit);
  if (f.instance) q.set('instance', f.instance);
  if (SINCE_MS[f.since]) q.set('since', String(Math.max(0, Math.floor(now - SINCE_MS[f.since]))));
  if (f.grep) q.set('grep', f.grep);
  q.set('limit', String(f.limit));
  if (f.follow) q.set('follow', 'true');
  return `/api/v1/logs?${q.toString()}`;
}

/**
 * Reads an app's logs: resolves when the answer ends (a follow ends only when the server
 * closes it or `signal` aborts). Rejects with the server's ApiError for a refusal.
 */
export async function streamLogs(
  url: string,
  onItems: (items: LogItem[]) => void,
  signal: AbortSignal,
): Promise<void> {
  const res = await open(url, { signal, accept: 'application/x-ndjson' });
  const onBatch = (objs: Record<string, unknown>[]) => {
    const items: LogItem[] = [];
    for (const o of objs) {
      const it = classify(o);
      if (it) items.push(it);
    }
    if (items.length) onItems(items);
  };
  if (!res.body) {
    // No streaming body (old browsers): the whole answer at once.
    const p = new NdjsonParser();
    onBatch([...p.push(await res.text()), ...p.end()]);
    return;
  }
  await readNdjson(res.body, onBatch, signal);
}

/**
 * A JavaScript RegExp for highlighting what the server's (Rust) regex matched, or null
 * when the pattern is not also a valid JavaScript regex. A leading `(?i)`-style flag
 * group (i, m, s) becomes JavaScript flags.
 */
export function highlighter(grep: string): RegExp | null {
  if (!grep) return null;
  let src = grep;
  let flags = 'g';
  const m = /^\(\?([ims]+)\)/.exec(src);
  if (m) {
    src = src.slice(m[0].length);
    for (const f of m[1]) if (flags.indexOf(f) < 0) flags += f;
  }
  try {
    return new RegExp(src, flags);
  } catch {
    return null;
  }
}

/** A line cut into plain and matched parts (empty matches are not marked). */
export function segments(line: string, re: RegExp | null): { text: string; hit: boolean }[] {
  if (!re) return [{ text: line, hit: false }];
  const out: { text: string; hit: boolean }[] = [];
  re.lastIndex = 0;
  let last = 0;
  let guard = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line)) !== null && guard++ < 1000) {
    if (m[0] === '') {
      re.lastIndex++;
      if (re.lastIndex > line.length) break;
      continue;
    }
    if (m.index > last) out.push({ text: line.slice(last, m.index), hit: false });
    out.push({ text: m[0], hit: true });
    last = m.index + m[0].length;
  }
  if (last < line.length) out.push({ text: line.slice(last), hit: false });
  return out.length ? out : [{ text: line, hit: false }];
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** Local time to the millisecond: 2026-11-30 08:00:00.123. */
export function logTime(ms: number): string {
  const d = new Date(ms);
  if (isNaN(d.getTime())) return String(ms);
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`
  );
}
