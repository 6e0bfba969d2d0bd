import { useEffect, useState } from 'preact/hooks';
import type { Resource } from './api';
import type { ResourceStore } from './store';

/** Re-renders on every store change; returns the store. */
export function useStore(store: ResourceStore): ResourceStore {
  const [, setTick] = useState(0);
  useEffect(() => store.subscribe(() => setTick((n) => n + 1)), [store]);
  return store;
}

export function useKind(store: ResourceStore, kind: string): Resource[] {
  useStore(store);
  return store.list(kind);
}

/** Re-renders every `ms` (relative times, heartbeat ages). */
export function useNow(ms: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const id = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(id);
  }, [ms]);
  return now;
}
