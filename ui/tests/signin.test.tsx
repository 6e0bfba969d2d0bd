import { cleanup, fireEvent, render, waitFor } from '@testing-library/preact';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { setLang } from '../src/i18n';
import { SignIn } from '../src/pages/SignIn';

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

describe('SignIn', () => {
  it("shows the server's own message for a wrong token and signs in with a good one", async () => {
    setLang('en');
    const fetch = vi.fn(async (_url: string, init: RequestInit) => {
      const auth = (init.headers as Record<string, string>).Authorization;
      if (auth === 'Bearer good') return new Response(JSON.stringify({ user: 'admin', role: 'admin', version: '1', cluster: 'c' }));
      return new Response(JSON.stringify({ code: 'unauthorized', message: 'unknown or revoked token' }), { status: 401 });
    });
    vi.stubGlobal('fetch', fetch);
    const onSignedIn = vi.fn();
    const r = render(<SignIn notice={null} onLang={() => undefined} onSignedIn={onSignedIn} />);
    const input = r.getByTestId('signin-token') as HTMLInputElement;
    fireEvent.input(input, { target: { value: 'bad' } });
    fireEvent.submit(r.getByTestId('signin-form'));
    await waitFor(() => expect(r.getByTestId('signin-error-message').textContent).toBe('unknown or revoked token'));
    expect(fetch.mock.calls[0][0]).toBe('/api/v1');
    expect(onSignedIn).not.toHaveBeenCalled();
    fireEvent.input(input, { target: { value: 'good' } });
    fireEvent.submit(r.getByTestId('signin-form'));
    await waitFor(() => expect(onSignedIn).toHaveBeenCalledWith({ user: 'admin', role: 'admin', version: '1', cluster: 'c' }, 'good'));
  });

  it('is translated', () => {
    setLang('zh-CN');
    const r = render(<SignIn notice={null} onLang={() => undefined} onSignedIn={() => undefined} />);
    expect(r.getByTestId('signin-submit').textContent).toBe('登录');
    setLang('en');
  });
});
