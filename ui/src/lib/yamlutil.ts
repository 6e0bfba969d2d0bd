// Helpers for editing resources as YAML (pure: the `yaml` package itself is loaded
// lazily by the editor view).

import type { Any, Resource } from './api';

/** The object as a user edits it: no status, and of the server-managed metadata only
 * the name and the revision (the revision makes a stale save answer 409). */
export function editable(r: Resource): Resource {
  const md: Any = { name: r.metadata.name };
  if (r.metadata.labels && Object.keys(r.metadata.labels).length) md.labels = r.metadata.labels;
  if (r.metadata.annotations && Object.keys(r.metadata.annotations).length) md.annotations = r.metadata.annotations;
  if (r.metadata.revision !== undefined) md.revision = r.metadata.revision;
  const out: Any = { apiVersion: r.apiVersion ?? 'tessera.io/v1', kind: r.kind, metadata: md };
  if (r.spec !== undefined) out.spec = r.spec;
  return out;
}

const PLACEHOLDER = '•••••••• sealed-';

/** Replaces sealed secrets (`enc:v1:…`) anywhere in the object by placeholders, so
 * they are never shown; `unmask` puts the sealed values back before a save (the server
 * keeps a re-applied sealed value as it is). */
export function maskSecrets(obj: Any): { obj: Any; secrets: Record<string, string> } {
  const secrets: Record<string, string> = {};
  let n = 0;
  const walk = (v: Any): Any => {
    if (typeof v === 'string' && v.startsWith('enc:v1:')) {
      const key = `${PLACEHOLDER}${++n}`;
      secrets[key] = v;
      return key;
    }
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === 'object') {
      const o: Any = {};
      for (const k of Object.keys(v)) o[k] = walk(v[k]);
      return o;
    }
    return v;
  };
  return { obj: walk(obj), secrets };
}

export function unmask(text: string, secrets: Record<string, string>): string {
  let out = text;
  // Longest first, so `sealed-1` never eats the start of `sealed-10`.
  const keys = Object.keys(secrets).sort((a, b) => b.length - a.length);
  for (const k of keys) out = out.split(k).join(secrets[k]);
  return out;
}

/** Splits a server `field` (`document 2: spec.shards[1].primary`) into the document
 * (1-based) and path segments. */
export function parseField(field: string): { doc: number; path: string[] } {
  let doc = 1;
  let rest = field.trim();
  const m = /^document\s+(\d+)\s*:\s*(.*)$/.exec(rest);
  if (m) {
    doc = parseInt(m[1], 10);
    rest = m[2];
  }
  const path = rest
    .split('.')
    .map((s) => s.replace(/\[\d+\]$/, '').trim())
    .filter((s) => s !== '' && !/^\d+$/.test(s));
  return { doc, path };
}

/** The 1-based line in `text` where the field the server named is written (or its
 * nearest written parent), or null when none of it can be found. */
export function fieldLine(text: string, field: string | undefined | null): number | null {
  if (!field) return null;
  const { doc, path } = parseField(field);
  if (path.length === 0) return null;
  const lines = text.split(/\r?\n/);
  // The document's line range.
  let d = 1;
  let start = 0;
  let end = lines.length;
  let seen = false;
  for (let i = 0; i < lines.length; i++) {
    if (/^---(\s|$)/.test(lines[i])) {
      if (seen) d++;
      if (d === doc) start = i + 1;
      else if (d === doc + 1) {
        end = i;
        break;
      }
      continue;
    }
    if (lines[i].trim() !== '' && !lines[i].trim().startsWith('#')) seen = true;
  }
  if (d < doc) return null;
  let found: number | null = null;
  let from = start;
  let minIndent = -1;
  for (const seg of path) {
    const re = new RegExp(`^(\\s*)(- )?["']?${seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}["']?\\s*:`);
    let hit = -1;
    for (let i = from; i < end; i++) {
      const mm = re.exec(lines[i]);
      if (mm && mm[1].length + (mm[2] ? 2 : 0) > minIndent) {
        hit = i;
        minIndent = mm[1].length + (mm[2] ? 2 : 0);
        break;
      }
    }
    if (hit < 0) break;
    found = hit + 1;
    from = hit + 1;
  }
  return found;
}

/** Sets `metadata.revision` in the text (keeping everything else as typed). */
export function setRevision(text: string, revision: number): string {
  const re = /^(\s+revision:\s*)\d+\s*$/m;
  if (re.test(text)) return text.replace(re, `$1${revision}`);
  return text.replace(/^(metadata:\s*\n)/m, `$1  revision: ${revision}\n`);
}

/** The line a YAML syntax error names in its message (`… at line 9 column 1`). */
export function messageLine(message: string | undefined | null): number | null {
  const m = /\bline (\d+)/.exec(message ?? '');
  return m ? parseInt(m[1], 10) : null;
}

/** Where to point for a server error: the field's line, else the line its message names. */
export function errorLine(text: string, field: string | undefined | null, message: string | undefined | null): number | null {
  const f = fieldLine(text, field);
  if (f !== null) return f;
  const l = messageLine(message);
  return l !== null && l >= 1 && l <= text.split('\n').length ? l : null;
}
