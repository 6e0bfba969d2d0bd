// A Server-Sent Events parser for streams read with fetch() (EventSource cannot send an
// Authorization header). Feed it bytes as they arrive, split anywhere; it returns the
// events completed so far. Follows the WHATWG event-stream rules: lines end in \n, \r\n
// or \r; `:` starts a comment; `data` lines join with \n; one leading space is dropped.

export interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

export class SseParser {
  private decoder = new TextDecoder('utf-8');
  private buf = '';
  private skipLf = false;
  private event = '';
  private data: string[] = [];
  private id: string | undefined;
  private hasData = false;
  /** The last `id:` seen (kept across events, as EventSource does). */
  lastId: string | undefined;

  push(chunk: Uint8Array | string): SseEvent[] {
    const text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    return this.feed(text);
  }

  /** Flushes a final line without a terminator (the stream ended). */
  end(): SseEvent[] {
    const rest = this.decoder.decode();
    const out = this.feed(rest);
    if (this.buf.length > 0) {
      this.line(this.buf, out);
      this.buf = '';
    }
    return out;
  }

  private feed(text: string): SseEvent[] {
    const out: SseEvent[] = [];
    let s = this.buf + text;
    this.buf = '';
    let start = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c === 10 /* \n */) {
        if (this.skipLf && i === start) {
          // The \n of a \r\n split across chunks.
          this.skipLf = false;
          start = i + 1;
          continue;
        }
        this.skipLf = false;
        this.line(s.slice(start, i), out);
        start = i + 1;
      } else if (c === 13 /* \r */) {
        this.line(s.slice(start, i), out);
        if (i + 1 < s.length) {
          if (s.charCodeAt(i + 1) === 10) i++;
          this.skipLf = false;
        } else {
          this.skipLf = true;
        }
        start = i + 1;
      } else {
        this.skipLf = false;
      }
    }
    s = s.slice(start);
    this.buf = s;
    return out;
  }

  private line(line: string, out: SseEvent[]): void {
    if (line === '') {
      if (this.hasData) {
        out.push({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
      }
      this.event = '';
      this.data = [];
      this.hasData = false;
      this.id = undefined;
      return;
    }
    if (line.charCodeAt(0) === 58 /* : */) return;
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    switch (field) {
      case 'event':
        this.event = value;
        break;
      case 'data':
        this.data.push(value);
        this.hasData = true;
        break;
      case 'id':
        if (value.indexOf('\u0000') < 0) {
          this.id = value;
          this.lastId = value;
        }
        break;
      default:
        // `retry` and unknown fields: ignored (reconnects use our own backoff).
        break;
    }
  }
}
