import { useEffect, useState } from 'preact/hooks';
import { Card, Empty, ErrorPanel, Page } from '../components/common';
import { t } from '../i18n';
import { request, type Any } from '../lib/api';
import { localTime } from '../lib/format';
import { toRfc3339 } from './Events';

interface AuditEvent {
  seq: number;
  time: string;
  user: string;
  role: string;
  action: string;
  kind: string;
  name: string;
  outcome: string;
  reason?: string;
  diff?: { path: string; before?: Any; after?: Any }[];
  source?: string;
}

interface AuditPage {
  items: AuditEvent[];
  next: number;
  more: boolean;
}

interface Filters {
  kind: string;
  name: string;
  user: string;
  since: string;
  until: string;
}

const EMPTY: Filters = { kind: '', name: '', user: '', since: '', until: '' };
const PAGE = 100;

/** The list URL for a page after `after` (the server's own query names). */
export function auditUrl(f: Filters, after: number, limit = PAGE): string {
  const q = new URLSearchParams();
  q.set('limit', String(limit));
  if (after > 0) q.set('after', String(after));
  if (f.kind.trim()) q.set('kind', f.kind.trim());
  if (f.name.trim()) q.set('name', f.name.trim());
  if (f.user.trim()) q.set('user', f.user.trim());
  const s = toRfc3339(f.since);
  const u = toRfc3339(f.until);
  if (s) q.set('since', s);
  if (u) q.set('until', u);
  return `/api/v1/auditevents?${q.toString()}`;
}

function show(v: Any): string {
  return v === undefined ? '∅' : typeof v === 'string' ? v : JSON.stringify(v);
}

export function Audit() {
  const [draft, setDraft] = useState<Filters>(EMPTY);
  const [filters, setFilters] = useState<Filters>(EMPTY);
  const [items, setItems] = useState<AuditEvent[]>([]);
  const [next, setNext] = useState(0);
  const [more, setMore] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [verify, setVerify] = useState<{ ok: boolean; checked: number; message?: string; seq?: number } | null>(null);
  const [verifyError, setVerifyError] = useState<unknown>(null);
  const [verifying, setVerifying] = useState(false);

  const load = async (after: number, append: boolean) => {
    setBusy(true);
    setError(null);
    try {
      const page = await request<AuditPage>(auditUrl(filters, after));
      setItems((old) => (append ? old.concat(page.items) : page.items));
      setNext(page.next);
      setMore(page.more);
    } catch (e) {
      setError(e);
      if (!append) setItems([]);
    } finally {
      setBusy(false);
    }
  };
  useEffect(() => {
    void load(0, false);
  }, [filters]);

  const runVerify = async () => {
    setVerifying(true);
    setVerify(null);
    setVerifyError(null);
    try {
      setVerify(await request('/api/v1/auditevents/verify'));
    } catch (e) {
      setVerifyError(e);
    } finally {
      setVerifying(false);
    }
  };

  const input = (k: keyof Filters, type: 'text' | 'datetime-local' = 'text') => {
    const onInput = (e: Event) => setDraft({ ...draft, [k]: (e.currentTarget as HTMLInputElement).value });
    return type === 'text' ? (
      <input type="text" data-testid={`audit-filter-${k}`} value={draft[k]} onInput={onInput} />
    ) : (
      <input type="datetime-local" data-testid={`audit-filter-${k}`} value={draft[k]} onInput={onInput} />
    );
  };

  return (
    <Page
      id="audit"
      title={t('audit.title')}
      actions={
        <button type="button" class="btn" data-testid="audit-verify" disabled={verifying} onClick={runVerify}>
          {verifying ? t('audit.verifying') : t('audit.verify')}
        </button>
      }
    >
      {verify ? (
        <p class={verify.ok ? 'panel ok' : 'panel error'} data-testid="audit-verify-result" data-ok={String(verify.ok)}>
          {verify.ok ? t('audit.verifyOk', { checked: verify.checked }) : t('audit.verifyBad', { seq: verify.seq ?? '?', message: verify.message ?? '' })}
        </p>
      ) : null}
      <ErrorPanel error={verifyError} testid="audit-verify-error" />
      <form
        class="filters"
        data-testid="audit-filters"
        onSubmit={(e) => {
          e.preventDefault();
          setFilters({ ...draft });
        }}
      >
        <label>
          {t('filter.kind')}
          {input('kind')}
        </label>
        <label>
          {t('filter.name')}
          {input('name')}
        </label>
        <label>
          {t('filter.user')}
          {input('user')}
        </label>
        <label>
          {t('filter.since')}
          {input('since', 'datetime-local')}
        </label>
        <label>
          {t('filter.until')}
          {input('until', 'datetime-local')}
        </label>
        <button type="submit" class="btn primary" data-testid="audit-filter-apply">
          {t('filter.apply')}
        </button>
        <button
          type="button"
          class="btn quiet"
          onClick={() => {
            setDraft(EMPTY);
            setFilters(EMPTY);
          }}
        >
          {t('filter.clear')}
        </button>
      </form>
      <ErrorPanel error={error} testid="audit-error" />
      <Card wide testid="audit-list">
        {items.length === 0 && !busy && !error ? <Empty text={t('audit.noEvents')} /> : null}
        {items.length ? (
          <table class="table">
            <thead>
              <tr>
                <th class="num">{t('audit.seq')}</th>
                <th>{t('common.time')}</th>
                <th>{t('filter.user')}</th>
                <th>{t('audit.action')}</th>
                <th>{t('common.kind')}</th>
                <th>{t('common.name')}</th>
                <th>{t('audit.outcome')}</th>
                <th>{t('audit.diff')}</th>
              </tr>
            </thead>
            <tbody>
              {items.map((ev) => (
                <tr key={ev.seq} data-testid={`audit-${ev.seq}`}>
                  <td class="num">{ev.seq}</td>
                  <td class="nowrap">{localTime(ev.time)}</td>
                  <td>
                    {ev.user} <span class="muted small">{ev.role}</span>
                  </td>
                  <td>{ev.action}</td>
                  <td>{ev.kind}</td>
                  <td>{ev.name}</td>
                  <td>
                    <span class={ev.outcome === 'accepted' ? 'badge ok' : 'badge bad'}>
                      {ev.outcome === 'accepted' ? t('audit.accepted') : ev.outcome === 'refused' ? t('audit.refused') : ev.outcome}
                    </span>
                    {ev.reason ? <div class="muted small">{ev.reason}</div> : null}
                  </td>
                  <td class="diff">
                    {(ev.diff ?? []).map((d) => (
                      <div key={d.path}>
                        <code>{d.path}</code>: {show(d.before)} → {show(d.after)}
                      </div>
                    ))}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : null}
        {more ? (
          <button type="button" class="btn" data-testid="audit-more" disabled={busy} onClick={() => load(next, true)}>
            {t('audit.more')}
          </button>
        ) : null}
      </Card>
    </Page>
  );
}
