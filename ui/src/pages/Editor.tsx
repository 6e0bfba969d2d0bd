// Edit one resource as YAML: validate (dry run) and save through `POST /api/v1/apply`.
// The user's text is never replaced behind their back: errors keep it, a stale revision
// offers an explicit choice, and live changes only refresh an unedited text.
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { stringify } from 'yaml';
import { Card, ErrorPanel, Page } from '../components/common';
import { t } from '../i18n';
import { ApiError, apply, request, type Any, type Resource } from '../lib/api';
import { useStore } from '../lib/hooks';
import { canWrite } from '../lib/perms';
import { Link } from '../lib/router';
import { editable, errorLine, maskSecrets, setRevision, unmask } from '../lib/yamlutil';
import type { EditorProps } from './EditorRoute';
import { ROUTES, Summary } from './ResourceList';

function toYaml(r: Resource): { text: string; secrets: Record<string, string> } {
  const { obj, secrets } = maskSecrets(editable(r));
  return { text: stringify(obj, { lineWidth: 0 }), secrets };
}

let dryRunSupport: Promise<boolean> | null = null;
/** Whether this server documents `dryRun` on apply (an older one would apply for real). */
function supportsDryRun(): Promise<boolean> {
  if (!dryRunSupport) {
    dryRunSupport = request<Any>('/api/v1/openapi.json')
      .then((doc) => JSON.stringify(doc?.paths?.['/api/v1/apply'] ?? {}).includes('dryRun'))
      .catch(() => false);
  }
  return dryRunSupport;
}

export function Editor({ store, who, kind, name }: EditorProps) {
  useStore(store);
  const live = store.get(kind, name);
  const route = ROUTES[kind];
  const writable = canWrite(who.role, kind);
  const [base, setBase] = useState<Resource | null>(live ?? null);
  const initial = useMemo(() => (base ? toYaml(base) : { text: '', secrets: {} }), [base]);
  const [text, setText] = useState(initial.text);
  const [busy, setBusy] = useState<'save' | 'validate' | null>(null);
  const [error, setError] = useState<ApiError | null>(null);
  const [line, setLine] = useState<number | null>(null);
  const [result, setResult] = useState<string | null>(null);
  const [dryRun, setDryRun] = useState<boolean | null>(null);
  const ta = useRef<HTMLTextAreaElement>(null);
  const gutter = useRef<HTMLDivElement>(null);
  const dirty = base !== null && text !== initial.text;

  useEffect(() => {
    void supportsDryRun().then(setDryRun);
  }, []);

  // First arrival, and live changes while the text is unedited.
  useEffect(() => {
    if (!live) return;
    if (!base || (!dirty && live.metadata.revision !== base.metadata.revision)) {
      setBase(live);
      setText(toYaml(live).text);
    }
  }, [live?.metadata.revision]);

  // Point at the line the server named: mark it in the gutter and select it.
  useEffect(() => {
    const el = ta.current;
    if (line === null || !el) return;
    const lines = text.split('\n');
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    const lh = parseFloat(getComputedStyle(el).lineHeight) || 20;
    el.scrollTop = Math.max(0, (line - 4) * lh);
    el.focus();
    el.setSelectionRange(start, start + (lines[line - 1] ?? '').length);
  }, [line, error]);

  if (!base) {
    return (
      <Page id="editor" title={name}>
        <p class="muted">{store.loaded ? t('editor.notFound', { kind: route.singular, name }) : t('common.loading')}</p>
        <Link href={route.base}>{t('common.back')}</Link>
      </Page>
    );
  }

  const send = async (mode: 'save' | 'validate') => {
    setBusy(mode);
    setError(null);
    setLine(null);
    setResult(null);
    try {
      const ans = await apply(unmask(text, initial.secrets), mode === 'validate');
      if (mode === 'validate') {
        setResult(t('editor.valid'));
      } else {
        const obj: Resource | undefined = ans?.results?.find((r: Any) => r.name === name)?.object;
        const fresh = obj ?? (await request<Resource>(`/api/v1/${kind}/${encodeURIComponent(name)}`));
        setBase(fresh);
        setText(toYaml(fresh).text);
        setResult(t('editor.saved', { rev: fresh.metadata.revision ?? ans?.revision ?? '—' }));
      }
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(0, 'error', String(e));
      setError(err);
      setLine(errorLine(text, err.field, err.message));
    } finally {
      setBusy(null);
    }
  };

  const latest = async (): Promise<Resource | null> => {
    try {
      return await request<Resource>(`/api/v1/${kind}/${encodeURIComponent(name)}`);
    } catch (e) {
      setError(e as ApiError);
      return null;
    }
  };
  const keepMine = async () => {
    const r = await latest();
    if (!r) return;
    setText(setRevision(text, r.metadata.revision ?? 0));
    setError(null);
    setLine(null);
  };
  const reload = async () => {
    if (dirty && !window.confirm(t('editor.confirmDiscard'))) return;
    const r = await latest();
    if (!r) return;
    setBase(r);
    setText(toYaml(r).text);
    setError(null);
    setLine(null);
    setResult(null);
  };

  const lineCount = text.split('\n').length;
  const numbers = [];
  for (let i = 1; i <= lineCount; i++) {
    numbers.push(
      <div key={i} class={i === line ? 'ln err' : 'ln'} data-testid={i === line ? 'yaml-error-line' : undefined}>
        {i}
      </div>,
    );
  }
  const changedOnServer = dirty && live && live.metadata.revision !== base.metadata.revision;
  const stale = error?.status === 409 && error.code === 'stale_revision';

  return (
    <Page
      id="editor"
      title={t('editor.title', { kind: route.singular, name })}
      actions={<Link href={route.base}>{t('common.back')}</Link>}
    >
      <div class="editor-layout">
        <Card title={t('common.details')} testid="resource-summary">
          <Summary kind={kind} r={live ?? base} />
        </Card>
        <Card
          wide
          title={
            <>
              {t('editor.yaml')} {dirty ? <span class="badge warn" data-testid="editor-dirty">{t('editor.modified')}</span> : null}
            </>
          }
        >
          {!writable ? <p class="notice small" data-testid="readonly-note">{t('common.readonly', { role: who.role })}</p> : null}
          {Object.keys(initial.secrets).length ? <p class="muted small">{t('editor.secretsNote')}</p> : null}
          {changedOnServer ? (
            <p class="notice small" data-testid="changed-on-server">
              {t('editor.changedOnServer', { rev: live!.metadata.revision ?? '—' })}
            </p>
          ) : null}
          <div class="yaml">
            <div class="gutter" ref={gutter} aria-hidden="true">
              {numbers}
            </div>
            <textarea
              ref={ta}
              data-testid="yaml-editor"
              class={line ? 'has-error' : ''}
              spellcheck={false}
              autocomplete="off"
              wrap="off"
              readOnly={!writable}
              rows={Math.min(Math.max(lineCount + 1, 12), 36)}
              value={text}
              onInput={(e) => setText((e.currentTarget as HTMLTextAreaElement).value)}
              onScroll={(e) => {
                if (gutter.current) gutter.current.scrollTop = (e.currentTarget as HTMLTextAreaElement).scrollTop;
              }}
            />
          </div>
          {error ? (
            <ErrorPanel error={error} testid="editor-error">
              {error.field || line ? (
                <div class="error-where" data-testid="editor-error-where" data-line={line ?? ''}>
                  {line ? t('editor.fieldAt', { field: error.field ?? '', line }) : t('editor.fieldNotFound', { field: error.field ?? '' })}
                </div>
              ) : null}
              {stale ? (
                <div class="error-actions">
                  <span>{t('editor.stale')}</span>
                  <button type="button" class="btn" data-testid="stale-keep" onClick={keepMine}>
                    {t('editor.keepMine')}
                  </button>
                  <button type="button" class="btn" data-testid="stale-reload" onClick={reload}>
                    {t('editor.reload')}
                  </button>
                </div>
              ) : null}
            </ErrorPanel>
          ) : null}
          {result ? (
            <p class="panel ok" role="status" data-testid="editor-result">
              {result}
            </p>
          ) : null}
          {writable ? (
            <div class="buttons">
              <button
                type="button"
                class="btn"
                data-testid="validate-button"
                disabled={busy !== null || dryRun !== true}
                title={dryRun === false ? t('editor.validateUnsupported') : ''}
                onClick={() => send('validate')}
              >
                {busy === 'validate' ? t('editor.validating') : t('editor.validate')}
              </button>
              <button type="button" class="btn primary" data-testid="save-button" disabled={busy !== null} onClick={() => send('save')}>
                {busy === 'save' ? t('editor.saving') : t('editor.save')}
              </button>
              <button type="button" class="btn quiet" data-testid="reset-button" disabled={!dirty || busy !== null} onClick={reload}>
                {t('editor.reset')}
              </button>
              {dryRun === false ? <span class="muted small">{t('editor.validateUnsupported')}</span> : null}
            </div>
          ) : null}
        </Card>
      </div>
    </Page>
  );
}
