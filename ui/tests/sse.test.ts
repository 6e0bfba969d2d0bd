import { describe, expect, it } from 'vitest';
import { SseParser } from '../src/lib/sse';

const enc = new TextEncoder();

function feedAll(parser: SseParser, bytes: Uint8Array, cuts: number[]) {
  const out = [];
  let last = 0;
  for (const c of [...cuts, bytes.length]) {
    out.push(...parser.push(bytes.slice(last, c)));
    last = c;
  }
  out.push(...parser.end());
  return out;
}

const STREAM =
  'id: 23\nevent: ADDED\ndata: {"kind":"Instance","name":"é-0","revision":23}\n\n' +
  ': keep-alive comment\n\n' +
  'id: 24\r\nevent: PROGRESS\r\ndata: {"revision":24}\r\n\r\n' +
  'event: MODIFIED\rdata: {"a":\rdata: 1}\r\r' +
  'event: compacted\ndata:{"code":"compacted"}\n\n';

describe('SseParser', () => {
  it('parses typed events, ids, comments and every line ending', () => {
    const evs = new SseParser().push(STREAM);
    expect(evs.map((e) => e.event)).toEqual(['ADDED', 'PROGRESS', 'MODIFIED', 'compacted']);
    expect(evs[0].id).toBe('23');
    expect(JSON.parse(evs[0].data).name).toBe('é-0');
    expect(evs[2].data).toBe('{"a":\n1}');
    expect(JSON.parse(evs[3].data).code).toBe('compacted');
  });

  it('gives the same events however the bytes are split', () => {
    const bytes = enc.encode(STREAM);
    const whole = feedAll(new SseParser(), bytes, []);
    for (let cut = 1; cut < bytes.length; cut++) {
      expect(feedAll(new SseParser(), bytes, [cut])).toEqual(whole);
    }
    // Every byte on its own (splits multi-byte UTF-8 and \r\n pairs).
    const single = Array.from({ length: bytes.length - 1 }, (_, i) => i + 1);
    expect(feedAll(new SseParser(), bytes, single)).toEqual(whole);
  });

  it('joins multi-line data and ignores events without data', () => {
    const evs = new SseParser().push('event: x\n\ndata: a\ndata:\ndata:  b\n\n');
    expect(evs).toEqual([{ event: 'message', data: 'a\n\n b', id: undefined }]);
  });

  it('keeps an unfinished event until its blank line arrives', () => {
    const p = new SseParser();
    expect(p.push('event: ADDED\ndata: {"x":1}\n')).toEqual([]);
    expect(p.push('\n')).toEqual([{ event: 'ADDED', data: '{"x":1}', id: undefined }]);
    expect(p.lastId).toBeUndefined();
  });
});
