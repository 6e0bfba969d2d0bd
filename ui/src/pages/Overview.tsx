import { useEffect, useState } from 'preact/hooks';
import { Card, Dot, Empty, ErrorPanel, Page } from '../components/common';
import { t, type Key } from '../i18n';
import { request, type Any, type Resource, type WhoAmI } from '../lib/api';
import { ageSeconds, nodeUp, shortAge } from '../lib/format';
import { useNow, useStore } from '../lib/hooks';
import { canReadAudit, canWrite } from '../lib/perms';
import { Link } from '../lib/router';
import type { ResourceStore } from '../lib/store';
import { EventTable, sortEvents } from './Events';

interface Members {
  state: string;
  term: number;
  leader: string | null;
  last_log_index: number;
  last_applied: number;
  members: { id: string; name: string; api: string; peer: string; zone: string | null; role: string; leader: boolean; matched_index: number; lag: number }[];
}

function useMembers(): [Members | null, unknown] {
  const [data, setData] = useState<Members | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let alive = true;
    const ctl = new AbortController();
    const poll = () =>
      request<Members>('/api/v1/members', { signal: ctl.signal })
        .then((m) => {
          if (alive) {
            setData(m);
            setError(null);
          }
        })
        .catch((e) => alive && (e as Error).name !== 'AbortError' && setError(e));
    poll();
    const id = setInterval(poll, 5000);
    return () => {
      alive = false;
      ctl.abort();
      clearInterval(id);
    };
  }, []);
  return [data, error];
}

export function nodeZone(n: Resource, clusters: Resource[]): string | null {
  if (n.spec?.zone) return n.spec.zone;
  const c = clusters.find((c) => c.metadata.name === n.spec?.cluster);
  return c?.spec?.zone ?? null;
}

const WRITABLE = ['regions', 'zones', 'units', 'shardmaps', 'clusters', 'nodes', 'apps', 'instances', 'artifacts', 'releases', 'trafficrules', 'datasources'];

export function Overview({ store, who }: { store: ResourceStore; who: WhoAmI }) {
  useStore(store);
  const now = useNow(5000);
  const [members, membersError] = useMembers();
  const nodes = store.list('nodes');
  const clusters = store.list('clusters');
  const zones = store.list('zones').map((z) => z.metadata.name);
  const byZone = new Map<string, Resource[]>();
  for (const z of zones) byZone.set(z, []);
  for (const n of nodes) {
    const z = nodeZone(n, clusters) ?? '';
    if (!byZone.has(z)) byZone.set(z, []);
    byZone.get(z)!.push(n);
  }
  const writable = WRITABLE.filter((k) => canWrite(who.role, k));
  const events = sortEvents(store.list('events')).slice(0, 8);
  const counts: [Key | string, number][] = [
    ['overview.units', store.list('units').length],
    ['nav.apps', store.list('apps').length],
    ['apps.instances', store.list('instances').length],
    ['nav.traffic', store.list('trafficrules').length],
    ['nav.datasources', store.list('datasources').length],
    ['nav.releases', store.list('releases').length],
  ];
  return (
    <Page id="overview" title={t('overview.title')}>
      <div class="grid">
        <Card title={t('overview.members')} testid="members" wide>
          <ErrorPanel error={membersError} />
          {members ? (
            <>
              <p class="muted small">
                {t('overview.term')} {members.term} ·{' '}
                {t('overview.applied', { applied: members.last_applied, index: members.last_log_index, state: members.state })}
              </p>
              <table class="table">
                <thead>
                  <tr>
                    <th>{t('common.name')}</th>
                    <th>{t('overview.leader')}</th>
                    <th>{t('overview.memberRole')}</th>
                    <th>{t('common.zone')}</th>
                    <th>{t('overview.api')}</th>
                    <th class="num">{t('overview.matched')}</th>
                    <th class="num">{t('overview.lag')}</th>
                  </tr>
                </thead>
                <tbody>
                  {members.members.map((m) => (
                    <tr key={m.id} data-testid={`member-${m.name}`}>
                      <td>{m.name}</td>
                      <td>{m.leader ? <span class="badge ok">{t('overview.leader')}</span> : ''}</td>
                      <td>{m.role}</td>
                      <td>{m.zone ?? '—'}</td>
                      <td><code>{m.api}</code></td>
                      <td class="num">{m.matched_index}</td>
                      <td class="num">{m.lag}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </>
          ) : membersError ? null : (
            <Empty text={t('common.loading')} />
          )}
        </Card>
        <Card title={t('overview.nodes')} testid="nodes-per-zone">
          {byZone.size === 0 ? <Empty /> : null}
          {Array.from(byZone.entries()).map(([zone, ns]) => {
            const up = ns.filter((n) => nodeUp(n, now)).length;
            return (
              <div class="zone-row" key={zone} data-testid={`zone-${zone || 'none'}`}>
                <div class="zone-name">{zone || t('overview.noZone')}</div>
                <div class="zone-counts">
                  <Dot ok={up > 0 ? true : ns.length ? false : null} label={`${up} ${t('overview.up')}`} />
                  <span class="muted">{ns.length - up} {t('overview.down')}</span>
                </div>
                <ul class="plain small">
                  {ns.map((n) => (
                    <li key={n.metadata.name}>
                      <Dot ok={nodeUp(n, now)} label={n.metadata.name} />{' '}
                      <span class="muted">
                        {t('overview.heartbeat')} {shortAge(ageSeconds(n.status?.heartbeatMs as Any, now))}
                      </span>
                    </li>
                  ))}
                </ul>
              </div>
            );
          })}
        </Card>
        <Card title={t('overview.counts')} testid="counts">
          <dl class="counts">
            {counts.map(([k, n]) => (
              <div key={k}>
                <dt>{t(k as Key)}</dt>
                <dd>{n}</dd>
              </div>
            ))}
          </dl>
        </Card>
        <Card title={t('overview.access')} testid="access">
          <p>
            <span class="badge">{who.role}</span>{' '}
            {writable.length ? t('overview.mayWrite', { kinds: writable.join(', ') }) : t('overview.readOnly')}
          </p>
          {canReadAudit(who.role) ? <p class="muted">{t('overview.auditAccess')}</p> : null}
        </Card>
        <Card title={<Link href="/events">{t('overview.events')}</Link>} testid="recent-events" wide>
          <EventTable events={events} />
        </Card>
      </div>
    </Page>
  );
}
