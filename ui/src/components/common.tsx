import type { ComponentChildren } from 'preact';
import { ApiError } from '../lib/api';
import { t } from '../i18n';

/** The server's own words for a refusal: message, and the field when it names one. */
export function ErrorPanel({ error, testid = 'error-panel', children }: { error: unknown; testid?: string; children?: ComponentChildren }) {
  if (!error) return null;
  const e = error as ApiError;
  const message = e instanceof Error ? e.message : String(error);
  return (
    <div class="panel error" role="alert" data-testid={testid} data-code={e.code ?? ''}>
      <div class="error-title">
        {t('common.error')} {e.status ? <span class="muted">HTTP {e.status}{e.code ? ` · ${e.code}` : ''}</span> : null}
      </div>
      <div class="error-message" data-testid={`${testid}-message`}>{message}</div>
      {e.field ? (
        <div class="error-field" data-testid={`${testid}-field`}>
          {t('common.field')}: <code>{e.field}</code>
        </div>
      ) : null}
      {children}
    </div>
  );
}

export function Page({ id, title, actions, children }: { id: string; title: string; actions?: ComponentChildren; children: ComponentChildren }) {
  return (
    <section class="page" data-testid={`page-${id}`}>
      <header class="page-head">
        <h1>{title}</h1>
        {actions ? <div class="page-actions">{actions}</div> : null}
      </header>
      {children}
    </section>
  );
}

export function Card({ title, children, testid, wide }: { title?: ComponentChildren; children: ComponentChildren; testid?: string; wide?: boolean }) {
  return (
    <div class={wide ? 'card wide' : 'card'} data-testid={testid}>
      {title ? <h2>{title}</h2> : null}
      {children}
    </div>
  );
}

export function Empty({ text }: { text?: string }) {
  return <p class="empty">{text ?? t('common.none')}</p>;
}

export function Dot({ ok, label }: { ok: boolean | null; label: string }) {
  const cls = ok === null ? 'dot unknown' : ok ? 'dot ok' : 'dot bad';
  return (
    <span class="dot-label">
      <span class={cls} aria-hidden="true" />
      {label}
    </span>
  );
}

export function Loading() {
  return <p class="muted">{t('common.loading')}</p>;
}

export function KV({ rows }: { rows: [string, ComponentChildren][] }) {
  return (
    <dl class="kv">
      {rows.map(([k, v]) => (
        <div key={k} class="kv-row">
          <dt>{k}</dt>
          <dd>{v === undefined || v === null || v === '' ? '—' : v}</dd>
        </div>
      ))}
    </dl>
  );
}
