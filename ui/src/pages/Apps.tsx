import { Card, Dot, Empty, Page } from '../components/common';
import { t } from '../i18n';
import type { Resource } from '../lib/api';
import { useStore } from '../lib/hooks';
import { Link } from '../lib/router';
import type { ResourceStore } from '../lib/store';

/** The log view of an app, optionally filtered to a unit and an instance. */
export function logsHref(app: string, unit?: string, instance?: string): string {
  const q = new URLSearchParams();
  if (unit) q.set('unit', unit);
  if (instance) q.set('instance', instance);
  const qs = q.toString();
  return `/apps/${encodeURIComponent(app)}/logs${qs ? `?${qs}` : ''}`;
}

function InstanceRow({ i }: { i: Resource }) {
  const st = i.status ?? {};
  const ready = st.ready === true;
  const phase = st.phase ?? 'pending';
  const name = i.metadata.name;
  return (
    <tr data-testid={`instance-${name}`} data-phase={phase} data-ready={String(ready)}>
      <td>
        {name}
        {i.spec?.app ? (
          <>
            {' '}
            <Link href={logsHref(i.spec.app, i.spec?.unit, name)} class="small" data-testid={`instance-logs-${name}`} title={t('apps.instanceLogs', { name })}>
              {t('apps.logs')}
            </Link>
          </>
        ) : null}
      </td>
      <td>
        <span class={`badge phase-${phase}`}>{phase}</span>
        {st.draining ? <span class="badge warn">draining</span> : null}
      </td>
      <td>
        <Dot ok={ready} label={ready ? t('apps.healthy') : t('apps.unhealthy')} />
        {st.message ? <div class="muted small">{st.message}</div> : null}
      </td>
      <td class="num">{st.restarts ?? 0}</td>
      <td class="num">{st.pid ?? '—'}</td>
      <td>{st.endpoint ? <code>{st.endpoint}</code> : '—'}</td>
      <td>{i.spec?.node ?? '—'}</td>
      <td>{i.spec?.version ?? '—'}</td>
    </tr>
  );
}

/** Instances of one app grouped by unit, each unit with the zone it runs in. */
function groups(instances: Resource[], units: Resource[]): { key: string; unit: string; zone: string; items: Resource[] }[] {
  const m = new Map<string, { key: string; unit: string; zone: string; items: Resource[] }>();
  for (const i of instances) {
    const unit = i.spec?.unit ?? '—';
    const zone = i.status?.zone ?? units.find((u) => u.metadata.name === unit)?.spec?.zone ?? '—';
    const key = `${unit}/${zone}`;
    if (!m.has(key)) m.set(key, { key, unit, zone, items: [] });
    m.get(key)!.items.push(i);
  }
  return Array.from(m.values()).sort((a, b) => (a.key < b.key ? -1 : 1));
}

export function Apps({ store }: { store: ResourceStore }) {
  useStore(store);
  const apps = store.list('apps');
  const instances = store.list('instances');
  const units = store.list('units');
  const appNames = new Set(apps.map((a) => a.metadata.name));
  const orphans = instances.filter((i) => !appNames.has(i.spec?.app));
  const section = (name: string, app: Resource | null, items: Resource[]) => {
    const ready = items.filter((i) => i.status?.ready).length;
    return (
      <Card
        key={name}
        testid={`app-${name}`}
        wide
        title={
          <>
            {name}{' '}
            <span class={ready === items.length && items.length ? 'badge ok' : 'badge warn'}>
              {ready}/{items.length} {t('apps.ready')}
            </span>
            {app ? (
              <Link href={logsHref(name)} class="btn small card-action" data-testid={`logs-link-${name}`}>
                {t('apps.logs')}
              </Link>
            ) : null}
          </>
        }
      >
        {app ? (
          <p class="muted small">
            {t('apps.spec', {
              mode: app.spec?.mode ?? '—',
              artifact: app.spec?.artifact ?? app.spec?.image ?? '—',
              port: app.spec?.port ?? '—',
              replicas: app.spec?.replicasPerUnit ?? 1,
            })}
          </p>
        ) : null}
        {items.length === 0 ? <Empty text={t('apps.noInstances')} /> : null}
        {groups(items, units).map((g) => (
          <div key={g.key} class="unit-group" data-testid={`app-${name}-unit-${g.unit}`}>
            <h3>
              <span class="tag">{t('common.unit')}</span> {g.unit} <span class="tag">{t('common.zone')}</span> {g.zone}
            </h3>
            <table class="table">
              <thead>
                <tr>
                  <th>{t('common.name')}</th>
                  <th>{t('apps.phase')}</th>
                  <th>{t('apps.health')}</th>
                  <th class="num">{t('apps.restarts')}</th>
                  <th class="num">{t('apps.pid')}</th>
                  <th>{t('apps.endpoint')}</th>
                  <th>{t('apps.node')}</th>
                  <th>{t('common.version')}</th>
                </tr>
              </thead>
              <tbody>
                {g.items.map((i) => (
                  <InstanceRow key={i.metadata.name} i={i} />
                ))}
              </tbody>
            </table>
          </div>
        ))}
      </Card>
    );
  };
  return (
    <Page id="apps" title={t('apps.title')}>
      <div class="grid">
        {apps.length === 0 && orphans.length === 0 ? <Empty /> : null}
        {apps.map((a) => section(a.metadata.name, a, instances.filter((i) => i.spec?.app === a.metadata.name)))}
        {orphans.length ? section('—', null, orphans) : null}
      </div>
    </Page>
  );
}
