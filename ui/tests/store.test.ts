// @vitest-environment node
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ResourceStore } from '../src/lib/store';

const enc = new TextEncoder();

interface Stream {
  url: string;
  push: (s: string) => void;
  close: () => void;
}

/** A fake control API: lists from `lists`, watches as streams the test drives. */
function fakeServer(lists: Record<string, { items: unknown[]; revision: number }>) {
  const streams: Stream[] = [];
  const calls: string[] = [];
  const watchAnswers: (number | null)[] = []; // status to answer the next watches with (null: stream)
  const fetch = vi.fn(async (input: RequestInfo | URL) => {
    const url = String(input);
    calls.push(url);
    if (url.startsWith('/api/v1/watch')) {
      const status = watchAnswers.shift() ?? null;
      if (status) {
        return new Response(JSON.stringify({ code: status === 410 ? 'compacted' : 'unauthorized', message: `status ${status}` }), { status });
      }
      let ctl!: ReadableStreamDefaultController<Uint8Array>;
      const body = new ReadableStream<Uint8Array>({ start: (c) => (ctl = c) });
      streams.push({ url, push: (s) => ctl.enqueue(enc.encode(s)), close: () => ctl.close() });
      return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
    }
    const kind = url.replace('/api/v1/', '');
    return new Response(JSON.stringify(lists[kind]), { status: 200 });
  });
  return { fetch: fetch as unknown as typeof globalThis.fetch, streams, calls, watchAnswers };
}

const inst = (name: string, rev: number, ready: boolean) => ({ kind: 'Instance', metadata: { name, revision: rev }, status: { ready } });
const ev = (type: string, rev: number, obj: ReturnType<typeof inst>) =>
  `id: ${rev}\nevent: ${type}\ndata: ${JSON.stringify({ type, revision: rev, kind: 'Instance', name: obj.metadata.name, object: obj })}\n\n`;

let store: ResourceStore | null = null;
afterEach(() => store?.stop());

function make(server: ReturnType<typeof fakeServer>, onUnauthorized?: (m: string) => void) {
  store = new ResourceStore({ kinds: ['instances', 'nodes'], token: () => 'tok', fetch: server.fetch, minBackoffMs: 1, maxBackoffMs: 5, onUnauthorized });
  return store;
}

describe('ResourceStore', () => {
  it('lists, then watches from the lowest listed revision and applies changes', async () => {
    const srv = fakeServer({ instances: { items: [inst('a', 5, true)], revision: 10 }, nodes: { items: [], revision: 12 } });
    const s = make(srv);
    s.start();
    await vi.waitFor(() => expect(srv.streams.length).toBe(1));
    expect(srv.streams[0].url).toBe('/api/v1/watch?kinds=instances,nodes&since=10&progress=true');
    expect(s.list('instances').map((i) => i.metadata.name)).toEqual(['a']);
    srv.streams[0].push(ev('MODIFIED', 11, inst('a', 11, false)) + ev('ADDED', 12, inst('b', 12, true)));
    await vi.waitFor(() => expect(s.list('instances').length).toBe(2));
    expect(s.get('instances', 'a')?.status.ready).toBe(false);
    srv.streams[0].push(ev('DELETED', 13, inst('b', 13, true)) + 'event: PROGRESS\ndata: {"revision":20}\n\n');
    await vi.waitFor(() => expect(s.revision).toBe(20));
    expect(s.list('instances').map((i) => i.metadata.name)).toEqual(['a']);
    expect(s.status).toBe('live');
  });

  it('reconnects after a drop from the last revision seen, without re-listing', async () => {
    const srv = fakeServer({ instances: { items: [], revision: 3 }, nodes: { items: [], revision: 3 } });
    const s = make(srv);
    s.start();
    await vi.waitFor(() => expect(srv.streams.length).toBe(1));
    srv.streams[0].push(ev('ADDED', 7, inst('x', 7, true)));
    await vi.waitFor(() => expect(s.revision).toBe(7));
    srv.streams[0].close();
    await vi.waitFor(() => expect(srv.streams.length).toBe(2));
    expect(srv.streams[1].url).toContain('since=7');
    expect(s.lists).toBe(1);
    expect(s.get('instances', 'x')).toBeDefined();
  });

  it('re-lists on a compacted event and on a 410 answer', async () => {
    const srv = fakeServer({ instances: { items: [inst('old', 2, true)], revision: 4 }, nodes: { items: [], revision: 4 } });
    const s = make(srv);
    s.start();
    await vi.waitFor(() => expect(srv.streams.length).toBe(1));
    srv.watchAnswers.push(410);
    srv.streams[0].push('event: compacted\ndata: {"code":"compacted","message":"gone"}\n\n');
    // compacted -> list #2 -> watch answers 410 -> list #3 -> stream
    await vi.waitFor(() => expect(srv.streams.length).toBe(2));
    expect(s.lists).toBe(3);
    expect(srv.calls.filter((c) => c === '/api/v1/instances').length).toBe(3);
  });

  it('stops and reports a revoked token (401)', async () => {
    const srv = fakeServer({ instances: { items: [], revision: 1 }, nodes: { items: [], revision: 1 } });
    srv.watchAnswers.push(401);
    const seen: string[] = [];
    const s = make(srv, (m) => seen.push(m));
    s.start();
    await vi.waitFor(() => expect(seen).toEqual(['status 401']));
    expect(s.status).toBe('stopped');
    expect(srv.streams.length).toBe(0);
  });

  it('retries a failing server with a bounded backoff', async () => {
    const srv = fakeServer({ instances: { items: [], revision: 1 }, nodes: { items: [], revision: 1 } });
    srv.watchAnswers.push(503, 503, 503);
    const s = make(srv);
    s.start();
    await vi.waitFor(() => expect(srv.streams.length).toBe(1));
    expect(s.connects).toBe(4);
    expect(s.backoff(0)).toBe(1);
    expect(s.backoff(2)).toBe(4);
    expect(s.backoff(50)).toBe(5);
    const d = new ResourceStore({ kinds: [], token: () => null });
    expect(d.backoff(0)).toBe(500);
    expect(d.backoff(99)).toBe(15000);
  });
});
