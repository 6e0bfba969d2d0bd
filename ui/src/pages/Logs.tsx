// An app's collected log lines: filters (unit, instance, since, a server-side regex),
// a bounded buffer, and Follow (a streamed answer read with fetch, aborted on leave).
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from 'preact/hooks';
import { Card, ErrorPanel, Page } from '../components/common';
import { t, type Key } from '../i18n';
import { useStore } from '../lib/hooks';
import {
  LIMITS,
  MAX_BUFFER,
  SINCE_CHOICES,
  filtersFrom,
  filtersQuery,
  highlighter,
  logTime,
  logsUrl,
  segments,
  streamLogs,
  type LogFilters,
  type LogItem,
  type LogProblem,
  type LogRecord,
} from '../lib/logs';
import { Link, navigate, query } from '../lib/router';
import type { ResourceStore } from '../lib/store';

export interface LogsProps {
  store: ResourceStore;
  app: string;
  /** The page's path with its query (the filters of a deep link). */
  path: string;
  /** How long the search box waits for typing to stop (ms). */
  debounceMs?: number;
}

type State = 'loading' | 'following' | 'done' | 'ended' | 'paused' | 'error';
type Line = LogRecord & { id: number };

const SINCE_KEYS: Record<string, Key> = {
  '15m': 'logs.since15m',
  '1h': 'logs.since1h',
  '24h': 'logs.since24h',
  all: 'logs.sinceAll',
};

let nextId = 1;

function LogLine({ l, re }: { l: Line; re: RegExp | null }) {
  return (
    <div class={l.file === 'stderr' ? 'log-line stderr' : 'log-line'} data-testid="log-line" data-node={l.node} data-instance={l.instance ?? ''} data-t={l.t}>
      <span class="log-t" title={new Date(l.t).toISOString()}>{logTime(l.t)}</span>
      <span class="log-node">{l.node}</span>
      <span class="log-inst">{l.instance ?? '—'}</span>
      <span class="log-file">{l.file}</span>
      <span class="log-text">
        {segments(l.line, re).map((s, i) => (s.hit ? <mark key={i}>{s.text}</mark> : s.text))}
      </span>
    </div>
  );
}

export function Logs({ store, app, path, debounceMs = 400 }: LogsProps) {
  useStore(store);
  const [f, setF] = useState<LogFilters>(() => filtersFrom(query(path)));
  const [grepInput, setGrepInput] = useState(f.grep);
  const [lines, setLines] = useState<Line[]>([]);
  const [problems, setProblems] = useState<LogProblem[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [state, setState] = useState<State>('loading');
  const [dropped, setDropped] = useState(false);
  const [reload, setReload] = useState(0);
  const box = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const pausing = useRef(false);

  // The app's units and instances, from the live store.
  const instances = store.list('instances').filter((i) => i.spec?.app === app);
  const units = Array.from(new Set(instances.map((i) => String(i.spec?.unit ?? '')).filter(Boolean).concat(f.unit ? [f.unit] : []))).sort();
  const instNames = instances
    .filter((i) => !f.unit || i.spec?.unit === f.unit)
    .map((i) => i.metadata.name)
    .concat(f.instance ? [f.instance] : [])
    .filter((n, i, a) => a.indexOf(n) === i)
    .sort();

  const update = (patch: Partial<LogFilters>) => {
    const next = { ...f, ...patch };
    if (patch.unit !== undefined && next.instance && patch.unit && !instances.some((i) => i.metadata.name === next.instance && i.spec?.unit === patch.unit)) {
      next.instance = '';
    }
    setF(next);
    navigate(`/apps/${encodeURIComponent(app)}/logs${filtersQuery(next)}`, true);
  };

  // The search box: sent to the server once typing stops.
  useEffect(() => {
    if (grepInput === f.grep) return;
    const id = setTimeout(() => update({ grep: grepInput }), debounceMs);
    return () => clearTimeout(id);
  }, [grepInput, f]);

  // One request per filter change (a stream while following), aborted on change or leave.
  useEffect(() => {
    if (pausing.current) {
      // Follow was turned off: the stream stopped, the lines stay.
      pausing.current = false;
      return;
    }
    const ctl = new AbortController();
    let pending: Line[] = [];
    let pendingProblems: LogProblem[] = [];
    let timer: ReturnType<typeof setTimeout> | null = null;
    const flush = () => {
      timer = null;
      if (ctl.signal.aborted) return;
      if (pending.length) {
        const batch = pending;
        pending = [];
        setLines((prev) => {
          const next = prev.concat(batch);
          if (next.length <= MAX_BUFFER) return next;
          setDropped(true);
          return next.slice(next.length - MAX_BUFFER);
        });
      }
      if (pendingProblems.length) {
        const batch = pendingProblems;
        pendingProblems = [];
        setProblems((prev) => {
          const next = prev.slice();
          for (const p of batch) if (!next.some((q) => q.node === p.node && q.error === p.error)) next.push(p);
          return next;
        });
      }
    };
    const onItems = (items: LogItem[]) => {
      for (const it of items) {
        if ('record' in it) pending.push({ ...it.record, id: nextId++ });
        else pendingProblems.push(it.problem);
      }
      // Bounded too while waiting for a render.
      if (pending.length > MAX_BUFFER) pending = pending.slice(pending.length - MAX_BUFFER);
      if (!timer) timer = setTimeout(flush, 60);
    };
    setLines([]);
    setProblems([]);
    setError(null);
    setDropped(false);
    setState('loading');
    stick.current = true;
    const following = f.follow;
    if (following) setState('following');
    streamLogs(logsUrl(app, f), onItems, ctl.signal)
      .then(() => {
        if (ctl.signal.aborted) return;
        if (timer) clearTimeout(timer);
        flush();
        setState(following ? 'ended' : 'done');
      })
      .catch((e) => {
        if (ctl.signal.aborted || (e as Error)?.name === 'AbortError') return;
        if (timer) clearTimeout(timer);
        flush();
        setError(e);
        setState('error');
      });
    return () => {
      ctl.abort();
      if (timer) clearTimeout(timer);
    };
  }, [app, f.unit, f.instance, f.since, f.grep, f.limit, f.follow, reload]);

  // Keep the newest line in view unless the reader scrolled up.
  useLayoutEffect(() => {
    const el = box.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [lines]);
  const onScroll = () => {
    const el = box.current;
    if (el) stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
  };

  const toggleFollow = () => {
    if (f.follow) {
      pausing.current = true;
      setState('paused');
    }
    update({ follow: !f.follow });
  };

  const re = useMemo(() => highlighter(f.grep), [f.grep]);
  const rendered = useMemo(() => lines.map((l) => <LogLine key={l.id} l={l} re={re} />), [lines, re]);

  return (
    <Page
      id="logs"
      title={t('logs.title', { app })}
      actions={
        <Link href="/apps" class="btn" data-testid="logs-back">
          {t('logs.back')}
        </Link>
      }
    >
      <Card wide testid="logs-panel">
        <form
          class="filters"
          data-testid="logs-filters"
          onSubmit={(e) => {
            e.preventDefault();
            if (grepInput !== f.grep) update({ grep: grepInput });
            else setReload((n) => n + 1);
          }}
        >
          <label>
            {t('common.unit')}
            <select data-testid="logs-unit" value={f.unit} onChange={(e) => update({ unit: (e.target as HTMLSelectElement).value })}>
              <option value="">{t('logs.allUnits')}</option>
              {units.map((u) => (
                <option key={u} value={u}>
                  {u}
                </option>
              ))}
            </select>
          </label>
          <label>
            {t('logs.instance')}
            <select data-testid="logs-instance" value={f.instance} onChange={(e) => update({ instance: (e.target as HTMLSelectElement).value })}>
              <option value="">{t('logs.allInstances')}</option>
              {instNames.map((n) => (
                <option key={n} value={n}>
                  {n}
                </option>
              ))}
            </select>
          </label>
          <label>
            {t('logs.since')}
            <select data-testid="logs-since" value={f.since} onChange={(e) => update({ since: (e.target as HTMLSelectElement).value as LogFilters['since'] })}>
              {SINCE_CHOICES.map((s) => (
                <option key={s} value={s}>
                  {t(SINCE_KEYS[s])}
                </option>
              ))}
            </select>
          </label>
          <label>
            {t('logs.limit')}
            <select data-testid="logs-limit" value={String(f.limit)} onChange={(e) => update({ limit: Number((e.target as HTMLSelectElement).value) })}>
              {LIMITS.map((n) => (
                <option key={n} value={String(n)}>
                  {n}
                </option>
              ))}
            </select>
          </label>
          <label class="grow">
            {t('logs.search')}
            <input
              type="search"
              data-testid="logs-grep"
              value={grepInput}
              placeholder={t('logs.searchPlaceholder')}
              spellcheck={false}
              autocomplete="off"
              onInput={(e) => setGrepInput((e.target as HTMLInputElement).value)}
            />
          </label>
          <label class="check">
            <input type="checkbox" data-testid="logs-follow" checked={f.follow} onChange={toggleFollow} />
            {t('logs.follow')}
          </label>
          <button type="submit" class="btn" data-testid="logs-refresh" disabled={f.follow && state === 'following'}>
            {t('common.refresh')}
          </button>
        </form>
        {f.grep && !re ? (
          <p class="muted small" data-testid="logs-nohighlight">
            {t('logs.noHighlight')}
          </p>
        ) : null}
        <ErrorPanel error={error} testid="logs-error" />
        {problems.length ? (
          <div class="panel warn" role="status" data-testid="logs-problems">
            <div class="error-title">{t('logs.problems')}</div>
            <ul class="plain">
              {problems.map((p) => (
                <li key={`${p.node}\u0000${p.error}`} data-testid="logs-problem" data-node={p.node}>
                  <strong>{p.node}</strong>: {p.error}
                </li>
              ))}
            </ul>
          </div>
        ) : null}
        <div class="log-status muted small" data-testid="logs-status" data-state={state}>
          {state === 'following' ? (
            <span class="dot-label">
              <span class="dot ok pulse" aria-hidden="true" />
              {t('logs.following')}
            </span>
          ) : state === 'loading' ? (
            t('common.loading')
          ) : state === 'ended' ? (
            t('logs.ended')
          ) : state === 'paused' ? (
            t('logs.paused')
          ) : null}{' '}
          <span data-testid="logs-count" data-count={lines.length}>
            {t('logs.count', { count: lines.length })}
          </span>
          {dropped ? <span data-testid="logs-dropped"> · {t('logs.dropped', { max: MAX_BUFFER })}</span> : null}
        </div>
        <div class="log-box" ref={box} onScroll={onScroll} data-testid="log-lines" role="log" aria-live="off">
          {lines.length === 0 && (state === 'done' || state === 'paused') ? <p class="empty">{t('logs.none')}</p> : null}
          {rendered}
        </div>
      </Card>
    </Page>
  );
}
