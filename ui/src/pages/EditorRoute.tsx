// The YAML editor (and the `yaml` package) load only when a resource is opened.
import type { FunctionComponent } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ErrorPanel, Page } from '../components/common';
import { t } from '../i18n';
import type { WhoAmI } from '../lib/api';
import type { ResourceStore } from '../lib/store';

export interface EditorProps {
  store: ResourceStore;
  who: WhoAmI;
  kind: string;
  name: string;
}

let loaded: FunctionComponent<EditorProps> | null = null;

export function EditorRoute(props: EditorProps) {
  const [Editor, setEditor] = useState<FunctionComponent<EditorProps> | null>(() => loaded);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    if (loaded) return;
    import('./Editor')
      .then((m) => {
        loaded = m.Editor;
        setEditor(() => m.Editor);
      })
      .catch(setError);
  }, []);
  if (Editor) return <Editor {...props} />;
  return (
    <Page id="editor" title={props.name}>
      <ErrorPanel error={error} />
      {error ? null : <p class="muted">{t('editor.loadingYaml')}</p>}
    </Page>
  );
}
