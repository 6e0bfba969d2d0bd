// The log view loads only when it is opened (its own chunk), like the YAML editor.
import type { FunctionComponent } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ErrorPanel, Page } from '../components/common';
import { t } from '../i18n';
import type { LogsProps } from './Logs';

let loaded: FunctionComponent<LogsProps> | null = null;

export function LogsRoute(props: LogsProps) {
  const [Logs, setLogs] = useState<FunctionComponent<LogsProps> | null>(() => loaded);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    if (loaded) return;
    import('./Logs')
      .then((m) => {
        loaded = m.Logs;
        setLogs(() => m.Logs);
      })
      .catch(setError);
  }, []);
  if (Logs) return <Logs {...props} />;
  return (
    <Page id="logs" title={t('logs.title', { app: props.app })}>
      <ErrorPanel error={error} />
      {error ? null : <p class="muted">{t('logs.loadingView')}</p>}
    </Page>
  );
}
