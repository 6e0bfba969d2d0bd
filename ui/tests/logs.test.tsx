import { cleanup, fireEvent, render, waitFor } from '@testing-library/preact';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { setLang } from '../src/i18n';
import { setToken } from '../src/lib/api';
import { ResourceStore } from '../src/lib/store';
import { Logs } from '../src/pages/Logs';

const enc = new TextEncoder();

function store(): ResourceStore {
  const s = new ResourceStore({ kinds: ['apps', 'instances'], token: () => 'tok' });
  let rev = 1;
  for (const [name, unit] of [['echo-rz00-0', 'rz00'], ['echo-rz01-0', 'rz01'], ['other-rz00-0', 'rz00']]) {
    s.apply({
      type: 'ADDED',
      revision: rev++,
      kind: 'Instance',
      name,
      object: { kind: 'Instance', metadata: { name }, spec: { app: name.split('-')[0], unit, node: 'host-a' }, status: {} },
    });
  }
  return s;
}

const rec = (seq: number, line: string, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ seq, t: 1764489600000 + seq, node: 'host-a', app: 'echo', unit: 'rz00', instance: 'echo-rz00-0', file: 'stdout', line, ...extra }) + '\n';

/** An NDJSON answer whose body the test writes to (and may keep open). */
function streamed() {
  let ctl!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      ctl = c;
    },
  });
  return {
    response: new Response(body, { status: 200, headers: { 'Content-Type': 'application/x-ndjson' } }),
    write: (s: string) => ctl.enqueue(enc.encode(s)),
    close: () => ctl.close(),
  };
}

let calls: { url: string; init: RequestInit }[] = [];

beforeEach(() => {
  setLang('en');
  setToken('tok');
  calls = [];
  history.replaceState(null, '', '/apps/echo/logs');
});

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

describe('Logs', () => {
  it('renders records, problems and highlights the search', async () => {
    const fetch = vi.fn(async (url: string, init: RequestInit) => {
      calls.push({ url, init });
      // Split inside a multi-byte character on purpose.
      const bytes = enc.encode(rec(1, 'listening on 127.0.0.202:9000') + '{"node":"host-b","error":"agent unreachable"}\n' + rec(2, 'héllo wörld', { file: 'stderr', instance: undefined }));
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(bytes.slice(0, 150));
          c.enqueue(bytes.slice(150, bytes.length - 6));
          c.enqueue(bytes.slice(bytes.length - 6));
          c.close();
        },
      });
      return new Response(body, { status: 200 });
    });
    vi.stubGlobal('fetch', fetch);
    const r = render(<Logs store={store()} app="echo" path="/apps/echo/logs?grep=listen" debounceMs={0} />);
    await waitFor(() => expect(r.getAllByTestId('log-line')).toHaveLength(2));
    const url = new URL(calls[0].url, 'http://x');
    expect(url.pathname).toBe('/api/v1/logs');
    expect(url.searchParams.get('app')).toBe('echo');
    expect(url.searchParams.get('grep')).toBe('listen');
    expect(url.searchParams.get('follow')).toBeNull();
    expect((calls[0].init.headers as Record<string, string>).Authorization).toBe('Bearer tok');
    const lines = r.getAllByTestId('log-line');
    expect(lines[0].textContent).toContain('listening on 127.0.0.202:9000');
    expect(lines[0].textContent).toContain('host-a');
    expect(lines[0].textContent).toContain('echo-rz00-0');
    expect(lines[0].querySelector('mark')?.textContent).toBe('listen');
    expect(lines[1].textContent).toContain('héllo wörld');
    expect(lines[1].className).toContain('stderr');
    expect(r.getByTestId('logs-problem').textContent).toBe('host-b: agent unreachable');
    await waitFor(() => expect(r.getByTestId('logs-status').getAttribute('data-state')).toBe('done'));
    expect(r.getByTestId('logs-count').getAttribute('data-count')).toBe('2');
    // The unit filter offers the app's units only.
    const units = Array.from((r.getByTestId('logs-unit') as HTMLSelectElement).options).map((o) => o.value);
    expect(units).toEqual(['', 'rz00', 'rz01']);
  });

  it("shows the server's 400 message and its field", async () => {
    const fetch = vi.fn(async (url: string, init: RequestInit) => {
      calls.push({ url, init });
      const grep = new URL(url, 'http://x').searchParams.get('grep');
      if (grep === '(') {
        return new Response(
          JSON.stringify({ code: 'invalid', message: 'not a regular expression: unclosed group', field: 'grep' }),
          { status: 400, headers: { 'Content-Type': 'application/json' } },
        );
      }
      return new Response(rec(1, 'fine'), { status: 200 });
    });
    vi.stubGlobal('fetch', fetch);
    const r = render(<Logs store={store()} app="echo" path="/apps/echo/logs" debounceMs={0} />);
    await waitFor(() => expect(r.getAllByTestId('log-line')).toHaveLength(1));
    fireEvent.input(r.getByTestId('logs-grep'), { target: { value: '(' } });
    await waitFor(() => expect(r.getByTestId('logs-error-message').textContent).toBe('not a regular expression: unclosed group'));
    expect(r.getByTestId('logs-error-field').textContent).toContain('grep');
    expect(r.getByTestId('logs-error').getAttribute('data-code')).toBe('invalid');
    expect(r.getByTestId('logs-status').getAttribute('data-state')).toBe('error');
    expect(r.getByTestId('logs-nohighlight')).toBeTruthy();
    expect(r.queryAllByTestId('log-line')).toHaveLength(0);
    expect(location.search).toBe('?grep=%28');
  });

  it('follows a stream, keeps a bounded buffer and aborts on toggle and on leave', async () => {
    const streams: ReturnType<typeof streamed>[] = [];
    const signals: AbortSignal[] = [];
    const fetch = vi.fn(async (url: string, init: RequestInit) => {
      calls.push({ url, init });
      signals.push(init.signal!);
      const s = streamed();
      streams.push(s);
      return s.response;
    });
    vi.stubGlobal('fetch', fetch);
    const r = render(<Logs store={store()} app="echo" path="/apps/echo/logs?follow=true" debounceMs={0} />);
    await waitFor(() => expect(streams).toHaveLength(1));
    expect(new URL(calls[0].url, 'http://x').searchParams.get('follow')).toBe('true');
    expect(r.getByTestId('logs-status').getAttribute('data-state')).toBe('following');
    streams[0].write(rec(1, 'first'));
    await waitFor(() => expect(r.getAllByTestId('log-line')).toHaveLength(1));
    streams[0].write(rec(2, 'second'));
    await waitFor(() => expect(r.getAllByTestId('log-line')).toHaveLength(2));
    // More than the buffer holds: only the newest 2000 stay.
    let many = '';
    for (let i = 3; i < 2105; i++) many += rec(i, `line ${i}`);
    streams[0].write(many);
    await waitFor(() => expect(r.getByTestId('logs-count').getAttribute('data-count')).toBe('2000'));
    expect(r.getByTestId('logs-dropped')).toBeTruthy();
    const all = r.getAllByTestId('log-line');
    expect(all[all.length - 1].textContent).toContain('line 2104');
    expect(all[0].textContent).toContain('line 105');
    // Follow off: the stream is aborted, the lines stay, nothing is fetched again.
    fireEvent.click(r.getByTestId('logs-follow'));
    await waitFor(() => expect(signals[0].aborted).toBe(true));
    expect(r.getByTestId('logs-status').getAttribute('data-state')).toBe('paused');
    expect(r.getAllByTestId('log-line')).toHaveLength(2000);
    expect(fetch).toHaveBeenCalledTimes(1);
    // Follow on again: a new stream; leaving the page aborts it.
    fireEvent.click(r.getByTestId('logs-follow'));
    await waitFor(() => expect(streams).toHaveLength(2));
    streams[1].write(rec(9000, 'after resume'));
    await waitFor(() => expect(r.getAllByTestId('log-line')[0].textContent).toContain('after resume'));
    r.unmount();
    await waitFor(() => expect(signals[1].aborted).toBe(true));
    expect(fetch).toHaveBeenCalledTimes(2);
  });

  it('is translated', async () => {
    setLang('zh-CN');
    vi.stubGlobal('fetch', vi.fn(async () => new Response('', { status: 200 })));
    const r = render(<Logs store={store()} app="echo" path="/apps/echo/logs" debounceMs={0} />);
    expect(r.getByText('日志：echo')).toBeTruthy();
    await waitFor(() => expect(r.getByText('没有匹配的日志行。')).toBeTruthy());
    setLang('en');
  });
});
