import { Card, Empty, KV, Page } from '../components/common';
import { t } from '../i18n';
import type { Resource, WhoAmI } from '../lib/api';
import { maskSecret } from '../lib/format';
import { useKind } from '../lib/hooks';
import { canWrite } from '../lib/perms';
import { Link } from '../lib/router';
import type { ResourceStore } from '../lib/store';

export const ROUTES: Record<string, { base: string; id: string; title: 'traffic.title' | 'ds.title' | 'cert.title'; singular: string }> = {
  trafficrules: { base: '/traffic', id: 'traffic', title: 'traffic.title', singular: 'TrafficRule' },
  datasources: { base: '/datasources', id: 'datasources', title: 'ds.title', singular: 'DataSource' },
  certificates: { base: '/certificates', id: 'certificates', title: 'cert.title', singular: 'Certificate' },
};

/** Days until `notAfter` (RFC 3339), rounded down; negative once past. */
export function daysLeft(notAfter: unknown, now = Date.now()): number | null {
  if (typeof notAfter !== 'string') return null;
  const at = Date.parse(notAfter);
  return Number.isNaN(at) ? null : Math.floor((at - now) / 86_400_000);
}

/** A certificate's expiry with how long is left; `soon` under 30 days. */
export function Expiry({ notAfter }: { notAfter: unknown }) {
  const days = daysLeft(notAfter);
  if (days === null) return <span>—</span>;
  const soon = days < 30;
  const label = days < 0 ? t('cert.expired') : t('cert.daysLeft', { days: String(days) });
  return (
    <span class={soon ? 'badge warn' : undefined} data-testid="cert-expiry" data-days={String(days)}>
      {String(notAfter).slice(0, 10)} ({label})
    </span>
  );
}

/** The few fields worth seeing at a glance; secrets only masked. */
export function Summary({ kind, r }: { kind: string; r: Resource }) {
  const s = r.spec ?? {};
  if (kind === 'trafficrules') {
    return (
      <KV
        rows={[
          [t('common.app'), s.app],
          [t('traffic.host'), s.host],
          [t('traffic.path'), s.path ?? s.pathPrefix],
          [t('traffic.routeBy'), s.routeBy],
          [t('traffic.priority'), s.priority],
          [t('common.revision'), r.metadata.revision],
        ]}
      />
    );
  }
  if (kind === 'certificates') {
    const st = r.status ?? {};
    return (
      <KV
        rows={[
          [t('cert.hosts'), (s.hosts?.length ? s.hosts : st.dnsNames ?? []).join(', ')],
          [t('cert.notAfter'), <Expiry notAfter={st.notAfter} />],
          [t('cert.key'), <span data-testid="cert-key">{maskSecret(s.key, t('secret.sealed'))}</span>],
          [t('common.revision'), r.metadata.revision],
        ]}
      />
    );
  }
  return (
    <KV
      rows={[
        [t('ds.database'), s.database],
        [t('ds.shards'), (s.shards ?? []).map((x: { unit: string; primary: string }) => `${x.unit}: ${x.primary}`).join(', ')],
        [t('ds.user'), s.user],
        [t('ds.password'), <span data-testid="ds-password">{maskSecret(s.password, t('secret.sealed'))}</span>],
        [t('ds.failover'), s.failover],
        [t('common.revision'), r.metadata.revision],
      ]}
    />
  );
}

export function ResourceList({ store, who, kind }: { store: ResourceStore; who: WhoAmI; kind: string }) {
  const items = useKind(store, kind);
  const route = ROUTES[kind];
  const writable = canWrite(who.role, kind);
  const id = route.id;
  return (
    <Page id={id} title={t(route.title)}>
      {!writable ? <p class="notice small" data-testid="readonly-note">{t('common.readonly', { role: who.role })}</p> : null}
      <Card wide testid={`${id}-list`}>
        {items.length === 0 ? (
          <Empty />
        ) : (
          <table class="table">
            <thead>
              <tr>
                <th>{t('common.name')}</th>
                {kind === 'trafficrules' ? (
                  <>
                    <th>{t('common.app')}</th>
                    <th>{t('traffic.host')}</th>
                    <th>{t('traffic.path')}</th>
                    <th>{t('traffic.routeBy')}</th>
                  </>
                ) : kind === 'certificates' ? (
                  <>
                    <th>{t('cert.hosts')}</th>
                    <th>{t('cert.notAfter')}</th>
                    <th>{t('cert.key')}</th>
                  </>
                ) : (
                  <>
                    <th>{t('ds.database')}</th>
                    <th>{t('ds.shards')}</th>
                    <th>{t('ds.user')}</th>
                    <th>{t('ds.password')}</th>
                  </>
                )}
                <th>{t('common.revision')}</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {items.map((r) => {
                const href = `${route.base}/${encodeURIComponent(r.metadata.name)}`;
                const s = r.spec ?? {};
                return (
                  <tr key={r.metadata.name} data-testid={`row-${r.metadata.name}`}>
                    <td>
                      <Link href={href} data-testid={`open-${r.metadata.name}`}>
                        {r.metadata.name}
                      </Link>
                    </td>
                    {kind === 'trafficrules' ? (
                      <>
                        <td>{s.app}</td>
                        <td>{s.host ?? '*'}</td>
                        <td>
                          <code>{s.path ?? s.pathPrefix}</code>
                        </td>
                        <td>{s.routeBy}</td>
                      </>
                    ) : kind === 'certificates' ? (
                      <>
                        <td>{(s.hosts?.length ? s.hosts : r.status?.dnsNames ?? []).join(', ')}</td>
                        <td>
                          <Expiry notAfter={r.status?.notAfter} />
                        </td>
                        <td>{maskSecret(s.key, t('secret.sealed'))}</td>
                      </>
                    ) : (
                      <>
                        <td>{s.database}</td>
                        <td>{(s.shards ?? []).length}</td>
                        <td>{s.user ?? '—'}</td>
                        <td>{maskSecret(s.password, t('secret.sealed'))}</td>
                      </>
                    )}
                    <td>{r.metadata.revision}</td>
                    <td class="actions">
                      <Link href={href} class="btn small">
                        {writable ? t('editor.yaml') + ' ✎' : t('common.details')}
                      </Link>
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      </Card>
    </Page>
  );
}
