import { describe, expect, it } from 'vitest';
import { NdjsonParser, readNdjson } from '../src/lib/ndjson';
import { classify, highlighter, logsUrl, segments, DEFAULT_FILTERS, filtersFrom, filtersQuery } from '../src/lib/logs';

const enc = new TextEncoder();

function feedAll(p: NdjsonParser, bytes: Uint8Array, cuts: number[]) {
  const out: Record<string, unknown>[] = [];
  let last = 0;
  for (const c of [...cuts, bytes.length]) {
    out.push(...p.push(bytes.slice(last, c)));
    last = c;
  }
  out.push(...p.end());
  return out;
}

const STREAM =
  '{"seq":1,"t":1764489600000,"node":"host-a","app":"echo","unit":"rz00","instance":"echo-rz00-0","file":"stdout","line":"listening on 127.0.0.1:9000"}\n' +
  '{"node":"host-b","error":"connection refused (agent 10.0.0.2:7402)"}\r\n' +
  'not json at all\n' +
  '\n' +
  '[1,2,3]\n' +
  '{"seq":2,"t":1764489600001,"node":"host-a","app":"echo","unit":"rz00","file":"stderr","line":"日志 — ünïcødé 🚀 ok"}\n' +
  '{"broken": \n' +
  '{"seq":3,"t":1764489600002,"node":"host-a","app":"echo","unit":"rz00","file":"/var/log/echo/app.log","line":"last, no newline"}';

describe('NdjsonParser', () => {
  it('parses records and problems, skips blank and bad lines', () => {
    const p = new NdjsonParser();
    const out = [...p.push(STREAM), ...p.end()];
    expect(out).toHaveLength(4);
    expect(out[0].line).toBe('listening on 127.0.0.1:9000');
    expect(out[1]).toEqual({ node: 'host-b', error: 'connection refused (agent 10.0.0.2:7402)' });
    expect(out[2].line).toBe('日志 — ünïcødé 🚀 ok');
    expect(out[3].line).toBe('last, no newline');
    expect(p.bad).toBe(3);
  });

  it('gives the same objects however the bytes are split (inside UTF-8 characters too)', () => {
    const bytes = enc.encode(STREAM);
    const whole = feedAll(new NdjsonParser(), bytes, []);
    expect(whole).toHaveLength(4);
    for (let cut = 1; cut < bytes.length; cut++) {
      expect(feedAll(new NdjsonParser(), bytes, [cut])).toEqual(whole);
    }
    const single = Array.from({ length: bytes.length - 1 }, (_, i) => i + 1);
    expect(feedAll(new NdjsonParser(), bytes, single)).toEqual(whole);
    // Pseudo-random cuts, several per stream.
    let seed = 7;
    for (let round = 0; round < 200; round++) {
      const cuts: number[] = [];
      for (let c = 0; c < bytes.length; ) {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        c += 1 + (seed % 9);
        if (c < bytes.length) cuts.push(c);
      }
      expect(feedAll(new NdjsonParser(), bytes, cuts)).toEqual(whole);
    }
  });

  it('splits a 4-byte character across three chunks', () => {
    const bytes = enc.encode('{"line":"🚀"}\n');
    const i = bytes.indexOf(0xf0);
    const p = new NdjsonParser();
    expect(p.push(bytes.slice(0, i + 1))).toEqual([]);
    expect(p.push(bytes.slice(i + 1, i + 3))).toEqual([]);
    expect(p.push(bytes.slice(i + 3))).toEqual([{ line: '🚀' }]);
  });

  it('drops an overlong line and carries on', () => {
    const p = new NdjsonParser(50);
    const long = '{"line":"' + 'x'.repeat(100) + '"}';
    const out = [...p.push(long.slice(0, 60)), ...p.push(long.slice(60) + '\n{"ok":1}\n'), ...p.end()];
    expect(out).toEqual([{ ok: 1 }]);
    expect(p.bad).toBe(1);
  });

  it('reads a stream body in batches', async () => {
    const bytes = enc.encode(STREAM);
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < bytes.length; i += 13) c.enqueue(bytes.slice(i, i + 13));
        c.close();
      },
    });
    const got: Record<string, unknown>[] = [];
    await readNdjson(body, (items) => got.push(...items));
    expect(got).toEqual(feedAll(new NdjsonParser(), bytes, []));
  });

  it('stops reading when aborted', async () => {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(enc.encode('{"a":1}\n'));
      },
    });
    const ctl = new AbortController();
    const got: unknown[] = [];
    const done = readNdjson(body, (items) => {
      got.push(...items);
      ctl.abort();
    }, ctl.signal);
    await expect(done).rejects.toMatchObject({ name: 'AbortError' });
    expect(got).toEqual([{ a: 1 }]);
  });
});

describe('log helpers', () => {
  it('classifies records and problems', () => {
    expect(classify({ node: 'n', error: 'why' })).toEqual({ problem: { node: 'n', error: 'why' } });
    const r = classify({ seq: 1, t: 5, node: 'n', app: 'a', unit: 'u', file: 'stdout', line: 'x' });
    expect(r && 'record' in r && r.record.instance).toBeUndefined();
    expect(classify({ hello: 1 })).toBeNull();
  });

  it('builds the API address and the page query', () => {
    const f = { ...DEFAULT_FILTERS, unit: 'rz00', grep: 'a b|c', since: '15m' as const, follow: true };
    const url = new URL(logsUrl('echo', f, 1_000_000_000), 'http://x');
    expect(url.pathname).toBe('/api/v1/logs');
    expect(url.searchParams.get('app')).toBe('echo');
    expect(url.searchParams.get('unit')).toBe('rz00');
    expect(url.searchParams.get('grep')).toBe('a b|c');
    expect(url.searchParams.get('since')).toBe(String(1_000_000_000 - 900_000));
    expect(url.searchParams.get('limit')).toBe('500');
    expect(url.searchParams.get('follow')).toBe('true');
    expect(url.searchParams.has('instance')).toBe(false);
    expect(new URL(logsUrl('echo', DEFAULT_FILTERS), 'http://x').searchParams.has('since')).toBe(false);
    const qs = filtersQuery(f);
    expect(filtersFrom(new URLSearchParams(qs.slice(1)))).toEqual(f);
    expect(filtersQuery(DEFAULT_FILTERS)).toBe('');
    expect(filtersFrom(new URLSearchParams('since=bogus&limit=7'))).toEqual(DEFAULT_FILTERS);
  });

  it('highlights JS-compatible patterns and skips the others', () => {
    expect(segments('listening on 1.2.3.4:80', highlighter('listen(ing)?'))).toEqual([
      { text: 'listening', hit: true },
      { text: ' on 1.2.3.4:80', hit: false },
    ]);
    expect(segments('Error and error', highlighter('(?i)error')).filter((s) => s.hit).map((s) => s.text)).toEqual(['Error', 'error']);
    expect(highlighter('(?P<x>a)')).toBeNull(); // Rust syntax JS does not know
    expect(highlighter('')).toBeNull();
    expect(segments('abc', highlighter('x*'))).toEqual([{ text: 'abc', hit: false }]);
    expect(segments('abc', null)).toEqual([{ text: 'abc', hit: false }]);
  });
});
