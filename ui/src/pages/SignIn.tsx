import { useState } from 'preact/hooks';
import { ErrorPanel } from '../components/common';
import { LangSwitch } from '../components/Layout';
import { t, type Lang } from '../i18n';
import { ApiError, request, type WhoAmI } from '../lib/api';

export function SignIn(props: { notice: string | null; onLang: (l: Lang) => void; onSignedIn: (w: WhoAmI, token: string) => void }) {
  const [token, setTokenText] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const submit = async (e: Event) => {
    e.preventDefault();
    const tok = token.trim();
    if (!tok) {
      setError(new ApiError(0, '', t('signin.empty')));
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const w = await request<WhoAmI>('/api/v1', { token: tok, quiet401: true });
      props.onSignedIn(w, tok);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="signin-wrap" data-testid="page-signin">
      <form class="signin card" data-testid="signin-form" onSubmit={submit}>
        <div class="signin-head">
          <div class="brand">
            <span class="logo" aria-hidden="true">T</span>
            <span>tessera</span>
          </div>
          <LangSwitch onLang={props.onLang} />
        </div>
        <h1>{t('signin.title')}</h1>
        <p class="muted">{t('signin.lead')}</p>
        {props.notice ? <p class="notice" data-testid="signin-notice">{props.notice}</p> : null}
        <label class="field">
          <span>{t('signin.token')}</span>
          <input
            type="password"
            name="token"
            autocomplete="off"
            spellcheck={false}
            data-testid="signin-token"
            value={token}
            onInput={(e) => setTokenText((e.currentTarget as HTMLInputElement).value)}
          />
        </label>
        <ErrorPanel error={error} testid="signin-error" />
        <button type="submit" class="btn primary" data-testid="signin-submit" disabled={busy}>
          {busy ? t('signin.checking') : t('signin.submit')}
        </button>
      </form>
    </div>
  );
}
