import { Card, Empty, KV, Page } from '../components/common';
import { t } from '../i18n';
import type { Resource, WhoAmI } from '../lib/api';
import { maskSecret } from '../lib/format';
import { useKind } from '../lib/hooks';
import { canWrite } from '../lib/perms';
import { Link } from '../lib/router';
import type { ResourceStore } from '../lib/store';

export const ROUTES: Record<string, { base: string; title: 'traffic.title' | 'ds.title'; singular: string }> = {
  trafficrules: { base: '/traffic', title: 'traffic.title', singular: 'TrafficRule' },
  datasources: { base: '/datasources', title: 'ds.title', singular: 'DataSource' },
};

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
  const id = kind === 'trafficrules' ? 'traffic' : 'datasources';
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
