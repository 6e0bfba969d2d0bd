import { useEffect, useState } from 'preact/hooks';
import { Card, Empty, ErrorPanel, Page } from '../components/common';
import { t } from '../i18n';
import { request, type Resource } from '../lib/api';
import { useStore } from '../lib/hooks';
import type { ResourceStore } from '../lib/store';
import { nodeZone } from './Overview';

/** Expands shard map keys (`00-49`, `07`, `10-19,30`) into slot → unit. */
export function slotOwners(slots: Record<string, string> | undefined): Map<number, string> {
  const out = new Map<number, string>();
  for (const [key, unit] of Object.entries(slots ?? {})) {
    for (const part of key.split(',')) {
      const [a, b] = part.trim().split('-');
      const lo = parseInt(a, 10);
      const hi = b === undefined ? lo : parseInt(b, 10);
      if (isNaN(lo) || isNaN(hi)) continue;
      for (let s = Math.max(0, lo); s <= Math.min(99, hi); s++) out.set(s, unit);
    }
  }
  return out;
}

export function ShardGrid({ slots, units, testid }: { slots: Record<string, string> | undefined; units: string[]; testid?: string }) {
  const owners = slotOwners(slots);
  const used = Array.from(new Set(owners.values())).sort();
  const color = (u: string | undefined) => (u === undefined ? 'none' : String((units.indexOf(u) >= 0 ? units.indexOf(u) : units.length + used.indexOf(u)) % 8));
  const cells = [];
  for (let i = 0; i < 100; i++) {
    const u = owners.get(i);
    const id = String(i).padStart(2, '0');
    cells.push(
      <div key={id} class={`slot c${color(u)}`} title={`${id}: ${u ?? t('topology.unassigned')}`} data-slot={id} data-unit={u ?? ''}>
        {id}
      </div>,
    );
  }
  return (
    <div class="shard" data-testid={testid}>
      <div class="slot-grid">{cells}</div>
      <ul class="legend">
        {used.map((u) => (
          <li key={u}>
            <span class={`swatch c${color(u)}`} /> {u}
          </li>
        ))}
      </ul>
    </div>
  );
}

interface HistoryItem {
  revision: number;
  auditSeq: number | null;
  object: Resource;
}

function ShardMapCard({ map, units }: { map: Resource; units: string[] }) {
  const name = map.metadata.name;
  const [history, setHistory] = useState<HistoryItem[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [shown, setShown] = useState<HistoryItem | null>(null);
  useEffect(() => {
    request<{ items: HistoryItem[] }>(`/api/v1/shardmaps/${encodeURIComponent(name)}/history`)
      .then((h) => setHistory(h.items.slice().reverse()))
      .catch(setError);
  }, [name, map.metadata.revision]);
  const slots = shown ? shown.object.spec?.slots : map.spec?.slots;
  return (
    <Card title={t('topology.shardmap', { name })} testid={`shardmap-${name}`} wide>
      <div class="shard-layout">
        <div>
          <p class="muted small">
            {shown ? t('topology.viewing', { rev: shown.revision }) : `${t('topology.current')} · ${t('common.revision')} ${map.metadata.revision ?? '—'}`}
          </p>
          <ShardGrid slots={slots} units={units} testid={`shardgrid-${name}`} />
        </div>
        <div class="history" data-testid={`shardmap-history-${name}`}>
          <h3>{t('topology.history')}</h3>
          <ErrorPanel error={error} />
          <ul class="plain">
            <li>
              <button type="button" class={shown ? 'link' : 'link active'} onClick={() => setShown(null)}>
                {t('topology.current')}
              </button>
            </li>
            {(history ?? []).map((h) => (
              <li key={h.revision}>
                <button type="button" class={shown?.revision === h.revision ? 'link active' : 'link'} onClick={() => setShown(h)}>
                  {t('topology.historyEntry', { rev: h.revision, seq: h.auditSeq ?? '—' })}
                </button>
              </li>
            ))}
          </ul>
        </div>
      </div>
    </Card>
  );
}

export function Topology({ store }: { store: ResourceStore }) {
  useStore(store);
  const regions = store.list('regions');
  const zones = store.list('zones');
  const units = store.list('units');
  const clusters = store.list('clusters');
  const nodes = store.list('nodes');
  const maps = store.list('shardmaps');
  const unitNames = units.map((u) => u.metadata.name);
  const known = new Set(regions.map((r) => r.metadata.name));
  const orphanZones = zones.filter((z) => !known.has(z.spec?.region));

  const zoneBlock = (z: Resource) => {
    const zn = z.metadata.name;
    const zu = units.filter((u) => u.spec?.zone === zn);
    const standbys = units.filter((u) => u.spec?.standbyZone === zn);
    const zc = clusters.filter((c) => c.spec?.zone === zn);
    const zNodes = nodes.filter((n) => nodeZone(n, clusters) === zn && !n.spec?.cluster);
    return (
      <li key={zn} class="tree-zone" data-testid={`topo-zone-${zn}`}>
        <div class="tree-label">
          <span class="tag">{t('common.zone')}</span> <b>{zn}</b> {z.spec?.displayName ? <span class="muted">{z.spec.displayName}</span> : null}
        </div>
        <ul>
          {zu.map((u) => (
            <li key={u.metadata.name} data-testid={`topo-unit-${u.metadata.name}`}>
              <span class={`swatch c${unitNames.indexOf(u.metadata.name) % 8}`} /> <span class="tag">{u.spec?.type ?? t('common.unit')}</span>{' '}
              <b>{u.metadata.name}</b>
              {u.spec?.standbyZone ? <span class="muted"> · {t('topology.standby', { zone: u.spec.standbyZone })}</span> : null}
              {u.spec?.slots?.length ? <span class="muted"> · {t('topology.slots', { slots: u.spec.slots.join(', ') })}</span> : null}
            </li>
          ))}
          {standbys.map((u) => (
            <li key={`sb-${u.metadata.name}`} class="muted">
              ↺ {u.metadata.name} ({t('topology.standby', { zone: zn })})
            </li>
          ))}
          {zc.map((c) => (
            <li key={c.metadata.name}>
              {t('topology.cluster', { name: c.metadata.name, type: c.spec?.type ?? '?' })}
              <ul>
                {nodes
                  .filter((n) => n.spec?.cluster === c.metadata.name)
                  .map((n) => (
                    <li key={n.metadata.name}>{t('topology.node', { name: n.metadata.name })} <span class="muted">{n.spec?.address ?? ''}</span></li>
                  ))}
              </ul>
            </li>
          ))}
          {zNodes.map((n) => (
            <li key={n.metadata.name}>{t('topology.node', { name: n.metadata.name })}</li>
          ))}
        </ul>
      </li>
    );
  };
  const loose = nodes.filter((n) => !nodeZone(n, clusters) && !n.spec?.cluster);

  return (
    <Page id="topology" title={t('topology.title')}>
      <div class="grid">
        <Card title={t('topology.tree')} testid="topology-tree" wide>
          {regions.length === 0 && zones.length === 0 ? <Empty /> : null}
          <ul class="tree">
            {regions.map((r) => (
              <li key={r.metadata.name} data-testid={`topo-region-${r.metadata.name}`}>
                <div class="tree-label">
                  <span class="tag">{t('topology.region')}</span> <b>{r.metadata.name}</b> {r.spec?.displayName ? <span class="muted">{r.spec.displayName}</span> : null}
                </div>
                <ul>{zones.filter((z) => z.spec?.region === r.metadata.name).map(zoneBlock)}</ul>
              </li>
            ))}
            {orphanZones.length || loose.length ? (
              <li>
                <div class="tree-label muted">{t('topology.unplaced')}</div>
                <ul>
                  {orphanZones.map(zoneBlock)}
                  {loose.map((n) => (
                    <li key={n.metadata.name}>{t('topology.node', { name: n.metadata.name })} <span class="muted">{n.spec?.address ?? ''}</span></li>
                  ))}
                </ul>
              </li>
            ) : null}
          </ul>
        </Card>
        {maps.length === 0 ? (
          <Card title={t('topology.shardmap', { name: '' })}>
            <Empty text={t('topology.noShardmap')} />
          </Card>
        ) : (
          maps.map((m) => <ShardMapCard key={m.metadata.name} map={m} units={unitNames} />)
        )}
      </div>
    </Page>
  );
}
