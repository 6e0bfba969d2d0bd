import type { Resource } from './api';

/** Seconds since an RFC 3339 time or epoch milliseconds, or null. */
export function ageSeconds(t: string | number | undefined | null, now = Date.now()): number | null {
  if (t === undefined || t === null || t === '') return null;
  const ms = typeof t === 'number' ? t : Date.parse(t);
  if (!isFinite(ms)) return null;
  return Math.max(0, Math.round((now - ms) / 1000));
}

export function shortAge(s: number | null): string {
  if (s === null) return '—';
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function localTime(t: string | undefined): string {
  if (!t) return '—';
  const d = new Date(t);
  return isNaN(d.getTime()) ? t : d.toLocaleString();
}

/** Whether a node's heartbeat is recent (placement treats > 20 s as down). */
export function nodeUp(n: Resource, now = Date.now()): boolean {
  const hb = n.status?.heartbeatMs;
  if (typeof hb !== 'number') return false;
  return now - hb < 20000;
}

export function isSealed(v: unknown): boolean {
  return typeof v === 'string' && v.startsWith('enc:v1:');
}

/** How a secret is shown: never its value. */
export function maskSecret(v: unknown, sealedLabel: string): string {
  if (v === undefined || v === null || v === '') return '—';
  return isSealed(v) ? `•••••••• (${sealedLabel})` : '••••••••';
}
