import { useState } from 'preact/hooks';
import { Empty, Page } from '../components/common';
import { t } from '../i18n';
import type { Resource } from '../lib/api';
import { localTime } from '../lib/format';
import { useKind } from '../lib/hooks';
import type { ResourceStore } from '../lib/store';

export function eventTime(e: Resource): string {
  return e.spec?.time ?? e.metadata.createdAt ?? '';
}

export function sortEvents(events: Resource[]): Resource[] {
  return events.slice().sort((a, b) => (eventTime(a) < eventTime(b) ? 1 : eventTime(a) > eventTime(b) ? -1 : (b.metadata.revision ?? 0) - (a.metadata.revision ?? 0)));
}

export function EventTable({ events }: { events: Resource[] }) {
  if (events.length === 0) return <Empty />;
  return (
    <table class="table">
      <thead>
        <tr>
          <th>{t('common.time')}</th>
          <th>{t('events.type')}</th>
          <th>{t('events.reason')}</th>
          <th>{t('events.object')}</th>
          <th>{t('common.message')}</th>
        </tr>
      </thead>
      <tbody>
        {events.map((e) => (
          <tr key={e.metadata.name} data-testid={`event-${e.metadata.name}`}>
            <td class="nowrap">{localTime(eventTime(e))}</td>
            <td>
              <span class={e.spec?.type === 'Warning' ? 'badge warn' : 'badge'}>{e.spec?.type ?? '—'}</span>
            </td>
            <td>{e.spec?.reason ?? '—'}</td>
            <td class="nowrap">{[e.spec?.node, e.spec?.instance].filter(Boolean).join(' / ') || '—'}</td>
            <td>{e.spec?.message ?? ''}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** Turns a `datetime-local` value into an RFC 3339 UTC time ('' stays ''). */
export function toRfc3339(local: string): string {
  if (!local) return '';
  const d = new Date(local);
  return isNaN(d.getTime()) ? '' : d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function Events({ store }: { store: ResourceStore }) {
  const all = useKind(store, 'events');
  const [reason, setReason] = useState('');
  const [name, setName] = useState('');
  const [since, setSince] = useState('');
  const [until, setUntil] = useState('');
  const reasons = Array.from(new Set(all.map((e) => e.spec?.reason).filter(Boolean))).sort();
  const s = toRfc3339(since);
  const u = toRfc3339(until);
  const shown = sortEvents(all).filter((e) => {
    const time = eventTime(e);
    const obj = `${e.metadata.name} ${e.spec?.node ?? ''} ${e.spec?.instance ?? ''}`;
    return (!reason || e.spec?.reason === reason) && (!name || obj.includes(name)) && (!s || time >= s) && (!u || time <= u);
  });
  return (
    <Page id="events" title={t('events.title')}>
      <div class="filters" data-testid="event-filters">
        <label>
          {t('events.reason')}
          <select value={reason} onChange={(e) => setReason((e.currentTarget as HTMLSelectElement).value)}>
            <option value="">{t('common.all')}</option>
            {reasons.map((r) => (
              <option key={r} value={r}>
                {r}
              </option>
            ))}
          </select>
        </label>
        <label>
          {t('filter.name')}
          <input data-testid="event-filter-name" value={name} onInput={(e) => setName((e.currentTarget as HTMLInputElement).value)} />
        </label>
        <label>
          {t('filter.since')}
          <input type="datetime-local" value={since} onInput={(e) => setSince((e.currentTarget as HTMLInputElement).value)} />
        </label>
        <label>
          {t('filter.until')}
          <input type="datetime-local" value={until} onInput={(e) => setUntil((e.currentTarget as HTMLInputElement).value)} />
        </label>
      </div>
      <div class="card">
        <EventTable events={shown} />
      </div>
    </Page>
  );
}
