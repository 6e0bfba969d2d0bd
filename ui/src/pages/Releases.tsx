import { Card, Empty, KV, Page } from '../components/common';
import { t } from '../i18n';
import type { Resource } from '../lib/api';
import { localTime } from '../lib/format';
import { useStore } from '../lib/hooks';
import { Link } from '../lib/router';
import type { ResourceStore } from '../lib/store';

function Detail({ r }: { r: Resource }) {
  const s = r.spec ?? {};
  return (
    <Card title={r.metadata.name} testid={`release-${r.metadata.name}`} wide>
      <KV
        rows={[
          [t('common.app'), s.app],
          [t('common.version'), s.version],
          [t('releases.strategy'), s.strategy],
          [t('releases.canary'), s.canaryWeight],
          [t('releases.approvals'), s.approvals],
          [t('releases.batches'), (s.batches ?? []).map((b: string[]) => b.join(', ')).join(' → ')],
          [t('releases.phase'), r.status?.phase],
          [t('common.revision'), r.metadata.revision],
          [t('common.created'), localTime(r.metadata.createdAt)],
        ]}
      />
      {r.status ? <pre class="json">{JSON.stringify(r.status, null, 2)}</pre> : null}
    </Card>
  );
}

export function Releases({ store, name }: { store: ResourceStore; name?: string }) {
  useStore(store);
  const releases = store.list('releases');
  const artifacts = store.list('artifacts');
  const one = name ? store.get('releases', name) : undefined;
  return (
    <Page id="releases" title={t('releases.title')} actions={name ? <Link href="/releases">{t('common.back')}</Link> : undefined}>
      <div class="grid">
        {name ? (
          one ? <Detail r={one} /> : <Empty text={t('editor.notFound', { kind: 'Release', name })} />
        ) : (
          <Card wide testid="release-list">
            {releases.length === 0 ? (
              <Empty text={t('releases.none')} />
            ) : (
              <table class="table">
                <thead>
                  <tr>
                    <th>{t('common.name')}</th>
                    <th>{t('common.app')}</th>
                    <th>{t('common.version')}</th>
                    <th>{t('releases.strategy')}</th>
                    <th>{t('releases.phase')}</th>
                    <th>{t('common.created')}</th>
                  </tr>
                </thead>
                <tbody>
                  {releases.map((r) => (
                    <tr key={r.metadata.name}>
                      <td>
                        <Link href={`/releases/${encodeURIComponent(r.metadata.name)}`}>{r.metadata.name}</Link>
                      </td>
                      <td>{r.spec?.app}</td>
                      <td>{r.spec?.version}</td>
                      <td>{r.spec?.strategy}</td>
                      <td>{r.status?.phase ?? '—'}</td>
                      <td>{localTime(r.metadata.createdAt)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </Card>
        )}
        <Card title={t('releases.artifacts')} testid="artifact-list" wide>
          {artifacts.length === 0 ? (
            <Empty />
          ) : (
            <table class="table">
              <thead>
                <tr>
                  <th>{t('common.name')}</th>
                  <th>{t('common.version')}</th>
                  <th>{t('common.created')}</th>
                </tr>
              </thead>
              <tbody>
                {artifacts.map((a) => (
                  <tr key={a.metadata.name}>
                    <td>{a.metadata.name}</td>
                    <td>{a.spec?.version}</td>
                    <td>{localTime(a.metadata.createdAt)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </Card>
      </div>
    </Page>
  );
}
