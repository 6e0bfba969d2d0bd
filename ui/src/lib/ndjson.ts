// Newline-delimited JSON read from a fetch() body: feed bytes as they arrive, split
// anywhere (inside a multi-byte UTF-8 character too); get back the JSON objects completed
// so far. A line ends in \n (a trailing \r is dropped); blank lines are skipped; a line
// that is not a JSON object is counted in `bad` and skipped, never thrown.

export class NdjsonParser {
  private decoder = new TextDecoder('utf-8');
  private buf = '';
  private skipping = false;
  /** Lines that were not JSON objects (or were too long), skipped. */
  bad = 0;
  /** A line longer than this (UTF-16 units) is dropped rather than kept growing. */
  readonly maxLine: number;

  constructor(maxLine = 1 << 20) {
    this.maxLine = maxLine;
  }

  push(chunk: Uint8Array | string): Record<string, unknown>[] {
    const text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    return this.feed(text);
  }

  /** The stream ended: flushes the decoder and a final line without its \n. */
  end(): Record<string, unknown>[] {
    const out = this.feed(this.decoder.decode());
    const rest = this.buf;
    this.buf = '';
    if (!this.skipping) this.line(rest, out);
    this.skipping = false;
    return out;
  }

  private feed(text: string): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl < 0) break;
      if (this.skipping) this.skipping = false;
      else this.line(this.buf + text.slice(start, nl), out);
      this.buf = '';
      start = nl + 1;
    }
    if (!this.skipping) {
      this.buf += text.slice(start);
      if (this.buf.length > this.maxLine) {
        // An overlong line: drop what there is and the rest of it up to its \n.
        this.buf = '';
        this.skipping = true;
        this.bad++;
      }
    }
    return out;
  }

  private line(raw: string, out: Record<string, unknown>[]): void {
    const s = raw.charCodeAt(raw.length - 1) === 13 ? raw.slice(0, -1) : raw;
    if (s.trim() === '') return;
    let v: unknown;
    try {
      v = JSON.parse(s);
    } catch {
      this.bad++;
      return;
    }
    if (v && typeof v === 'object' && !Array.isArray(v)) out.push(v as Record<string, unknown>);
    else this.bad++;
  }
}

/**
 * Reads an NDJSON body to its end (or until `signal` aborts), handing each batch of
 * objects that arrived together to `onItems`. Resolves when the body ends; rejects with
 * the reader's error (an AbortError after an abort).
 */
export async function readNdjson(
  body: ReadableStream<Uint8Array>,
  onItems: (items: Record<string, unknown>[]) => void,
  signal?: AbortSignal,
): Promise<void> {
  const reader = body.getReader();
  const parser = new NdjsonParser();
  const cancel = () => {
    reader.cancel().catch(() => undefined);
  };
  signal?.addEventListener('abort', cancel);
  try {
    for (;;) {
      if (signal?.aborted) throw abortError();
      const { done, value } = await reader.read();
      if (signal?.aborted) throw abortError();
      const items = done ? parser.end() : parser.push(value!);
      if (items.length) onItems(items);
      if (done) return;
    }
  } finally {
    signal?.removeEventListener('abort', cancel);
    cancel();
  }
}

function abortError(): Error {
  const e = new Error('aborted');
  e.name = 'AbortError';
  return e;
}
