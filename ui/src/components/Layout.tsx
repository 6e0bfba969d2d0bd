import type { ComponentChildren } from 'preact';
import { LANGS, lang, t, type Key, type Lang } from '../i18n';
import type { WhoAmI } from '../lib/api';
import { useStore } from '../lib/hooks';
import { canReadAudit } from '../lib/perms';
import { Link } from '../lib/router';
import type { ResourceStore } from '../lib/store';

const NAV: { id: string; href: string; key: Key; audit?: boolean }[] = [
  { id: 'overview', href: '/', key: 'nav.overview' },
  { id: 'topology', href: '/topology', key: 'nav.topology' },
  { id: 'apps', href: '/apps', key: 'nav.apps' },
  { id: 'traffic', href: '/traffic', key: 'nav.traffic' },
  { id: 'datasources', href: '/datasources', key: 'nav.datasources' },
  { id: 'certificates', href: '/certificates', key: 'nav.certificates' },
  { id: 'releases', href: '/releases', key: 'nav.releases' },
  { id: 'events', href: '/events', key: 'nav.events' },
  { id: 'audit', href: '/audit', key: 'nav.audit', audit: true },
];

export function active(path: string, href: string): boolean {
  const p = path.split('?')[0];
  return href === '/' ? p === '/' : p === href || p.startsWith(href + '/');
}

export function LangSwitch({ onLang }: { onLang: (l: Lang) => void }) {
  return (
    <label class="lang">
      <span class="sr-only">{t('header.language')}</span>
      <select
        data-testid="lang-switch"
        aria-label={t('header.language')}
        value={lang()}
        onChange={(e) => onLang((e.currentTarget as HTMLSelectElement).value as Lang)}
      >
        {LANGS.map((l) => (
          <option key={l.id} value={l.id}>
            {l.label}
          </option>
        ))}
      </select>
    </label>
  );
}

function roleLabel(role: string): string {
  const k = `role.${role}` as Key;
  const s = t(k);
  return s === k ? role : s;
}

export function Layout(props: {
  who: WhoAmI;
  path: string;
  store: ResourceStore;
  onLang: (l: Lang) => void;
  onSignOut: () => void;
  children: ComponentChildren;
}) {
  const { who, path, store } = props;
  useStore(store);
  const status = store.status;
  return (
    <div class="shell">
      <aside class="sidebar">
        <div class="brand">
          <span class="logo" aria-hidden="true">T</span>
          <span>tessera</span>
        </div>
        <nav>
          {NAV.filter((n) => !n.audit || canReadAudit(who.role)).map((n) => (
            <Link key={n.id} href={n.href} data-testid={`nav-${n.id}`} class={active(path, n.href) ? 'active' : ''}>
              {t(n.key)}
            </Link>
          ))}
        </nav>
        <div class={`live live-${status}`} data-testid="live-status" data-status={status} title={store.error ?? ''}>
          <span class="dot" aria-hidden="true" />
          {t(`live.${status}` as Key)}
        </div>
      </aside>
      <div class="main">
        <header class="topbar" data-testid="header">
          <div class="who">
            <span>
              <span class="muted">{t('header.user')}</span> <b data-testid="header-user">{who.user}</b>
            </span>
            <span>
              <span class="muted">{t('header.role')}</span>{' '}
              <b data-testid="header-role" data-role={who.role}>
                {roleLabel(who.role)}
              </b>
            </span>
            <span>
              <span class="muted">{t('header.cluster')}</span> <code title={who.cluster}>{who.cluster.slice(0, 12)}</code>
            </span>
            <span>
              <span class="muted">{t('header.version')}</span> <span title={who.version}>{who.version.split(' ')[0]}</span>
            </span>
          </div>
          <div class="top-actions">
            <LangSwitch onLang={props.onLang} />
            <button type="button" class="btn" data-testid="signout" onClick={props.onSignOut}>
              {t('header.signout')}
            </button>
          </div>
        </header>
        <main class="content">{props.children}</main>
      </div>
    </div>
  );
}
