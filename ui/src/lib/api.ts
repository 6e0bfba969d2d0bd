// Every request goes to this page's own origin, with the signed-in user's bearer token.
// Errors are the server's JSON `{code, message, field?}`, kept as they are.

const TOKEN_KEY = 'tessera.token';

export class ApiError extends Error {
  status: number;
  code: string;
  field?: string;
  constructor(status: number, code: string, message: string, field?: string) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export function getToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string | null): void {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the session lasts as long as the page */
  }
}

/** Called when the server answers 401 to a signed-in request (token revoked). */
let onUnauthorized: ((message: string) => void) | null = null;
export function setUnauthorizedHandler(f: ((message: string) => void) | null): void {
  onUnauthorized = f;
}

export interface RequestOptions {
  method?: string;
  body?: string;
  contentType?: string;
  signal?: AbortSignal;
  token?: string;
  /** Do not treat 401 as a revoked session (the sign-in check). */
  quiet401?: boolean;
  /** The Accept header (default application/json). */
  accept?: string;
}

export function headers(token: string | null, contentType?: string): Record<string, string> {
  const h: Record<string, string> = { Accept: 'application/json' };
  if (token) h.Authorization = `Bearer ${token}`;
  if (contentType) h['Content-Type'] = contentType;
  return h;
}

/** Turns a non-2xx answer into an ApiError carrying the server's own words. */
export async function errorFrom(res: Response): Promise<ApiError> {
  let text = '';
  try {
    text = await res.text();
  } catch {
    /* body unreadable */
  }
  try {
    const j = JSON.parse(text);
    if (j && typeof j.message === 'string') {
      return new ApiError(res.status, String(j.code ?? res.status), j.message, j.field ?? undefined);
    }
  } catch {
    /* not JSON */
  }
  return new ApiError(res.status, String(res.status), text.trim() || `HTTP ${res.status} ${res.statusText}`);
}

/**
 * Sends a request and returns the answer once its status is a success, with the body
 * unread (for streams); anything else becomes an ApiError with the server's words.
 */
export async function open(path: string, opts: RequestOptions = {}): Promise<Response> {
  const token = opts.token ?? getToken();
  const h = headers(token, opts.contentType);
  if (opts.accept) h.Accept = opts.accept;
  let res: Response;
  try {
    res = await fetch(path, {
      method: opts.method ?? 'GET',
      headers: h,
      body: opts.body,
      signal: opts.signal,
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    throw new ApiError(0, 'network', (e as Error).message || 'network error');
  }
  if (!res.ok) {
    const err = await errorFrom(res);
    if (res.status === 401 && !opts.quiet401 && onUnauthorized) onUnauthorized(err.message);
    throw err;
  }
  return res;
}

export async function request<T = unknown>(path: string, opts: RequestOptions = {}): Promise<T> {
  const res = await open(path, opts);
  const text = await res.text();
  return (text ? JSON.parse(text) : null) as T;
}

export interface WhoAmI {
  user: string;
  role: string;
  version: string;
  cluster: string;
}

export interface ObjectMeta {
  name: string;
  revision?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  createdAt?: string;
}

// Resources are open-ended JSON: pages read the fields they show defensively.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Any = any;

export interface Resource {
  apiVersion?: string;
  kind: string;
  metadata: ObjectMeta;
  spec?: Any;
  status?: Any;
}

export interface ListAnswer {
  items: Resource[];
  revision: number;
}

/** The result of `POST /api/v1/apply`: kept loose (the server's shape may grow). */
export function apply(yamlText: string, dryRun: boolean): Promise<Any> {
  return request('/api/v1/apply' + (dryRun ? '?dryRun=true' : ''), {
    method: 'POST',
    body: yamlText,
    contentType: 'application/yaml',
  });
}
