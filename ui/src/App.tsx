import { useEffect, useMemo, useState } from 'preact/hooks';
import { Layout } from './components/Layout';
import { lang, setLang, t, type Lang } from './i18n';
import { getToken, request, setToken, setUnauthorizedHandler, type WhoAmI } from './lib/api';
import { match, navigate, usePath } from './lib/router';
import { ResourceStore } from './lib/store';
import { Apps } from './pages/Apps';
import { Audit } from './pages/Audit';
import { EditorRoute } from './pages/EditorRoute';
import { Events } from './pages/Events';
import { LogsRoute } from './pages/LogsRoute';
import { NotFound } from './pages/NotFound';
import { Overview } from './pages/Overview';
import { Releases } from './pages/Releases';
import { ResourceList } from './pages/ResourceList';
import { SignIn } from './pages/SignIn';
import { Topology } from './pages/Topology';

/** Every kind the pages show, followed through one watch stream. */
export const WATCHED = [
  'regions', 'zones', 'units', 'clusters', 'nodes', 'shardmaps', 'apps', 'instances',
  'artifacts', 'releases', 'trafficrules', 'datasources', 'certificates', 'events',
];

export function App() {
  const [lng, setLng] = useState<Lang>(lang());
  const [who, setWho] = useState<WhoAmI | null>(null);
  const [checking, setChecking] = useState<boolean>(!!getToken());
  const [notice, setNotice] = useState<string | null>(null);
  const path = usePath();

  const signOut = (message?: string) => {
    setToken(null);
    setWho(null);
    setNotice(message ? t('signin.expired', { message }) : null);
  };

  const store = useMemo(
    () => (who ? new ResourceStore({ kinds: WATCHED, token: getToken, onUnauthorized: (m) => signOut(m) }) : null),
    [who],
  );
  useEffect(() => {
    if (!store) return;
    store.start();
    return () => store.stop();
  }, [store]);

  useEffect(() => {
    setUnauthorizedHandler((m) => signOut(m));
    // A token kept from earlier in this tab's session: check it again.
    if (getToken()) {
      request<WhoAmI>('/api/v1', { quiet401: true })
        .then(setWho)
        .catch((e) => {
          setToken(null);
          setNotice(e.message);
        })
        .finally(() => setChecking(false));
    }
    return () => setUnauthorizedHandler(null);
  }, []);

  const onLang = (l: Lang) => {
    setLang(l);
    setLng(l);
  };

  if (checking) return <p class="boot muted">{t('app.loading')}</p>;
  if (!who || !store) {
    return (
      <SignIn
        key={lng}
        notice={notice}
        onLang={onLang}
        onSignedIn={(w, token) => {
          setToken(token);
          setNotice(null);
          setWho(w);
          if (path.startsWith('/signin')) navigate('/', true);
        }}
      />
    );
  }

  let page;
  let m: Record<string, string> | null;
  const p = path.split('?')[0];
  if (p === '/' || p === '/overview') page = <Overview store={store} who={who} />;
  else if (p === '/topology') page = <Topology store={store} />;
  else if (p === '/apps') page = <Apps store={store} />;
  else if ((m = match('/apps/:app/logs', p))) page = <LogsRoute key={m.app} store={store} app={m.app} path={path} />;
  else if (p === '/traffic') page = <ResourceList store={store} who={who} kind="trafficrules" />;
  else if (p === '/datasources') page = <ResourceList store={store} who={who} kind="datasources" />;
  else if ((m = match('/traffic/:name', p))) page = <EditorRoute store={store} who={who} kind="trafficrules" name={m.name} />;
  else if ((m = match('/datasources/:name', p))) page = <EditorRoute store={store} who={who} kind="datasources" name={m.name} />;
  else if (p === '/certificates') page = <ResourceList store={store} who={who} kind="certificates" />;
  else if ((m = match('/certificates/:name', p))) page = <EditorRoute store={store} who={who} kind="certificates" name={m.name} />;
  else if (p === '/releases') page = <Releases store={store} />;
  else if ((m = match('/releases/:name', p))) page = <Releases store={store} name={m.name} />;
  else if (p === '/events') page = <Events store={store} />;
  else if (p === '/audit') page = <Audit />;
  else page = <NotFound path={p} />;

  return (
    <Layout key={lng} who={who} path={path} store={store} onLang={onLang} onSignOut={() => {
        signOut();
        navigate('/', true);
      }}>
      {page}
    </Layout>
  );
}
