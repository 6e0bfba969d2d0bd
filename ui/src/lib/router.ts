// A tiny history-API router: the path is module state, components re-render through
// usePath(); links are plain <a href> elements whose clicks are intercepted.

import { h, type ComponentChildren } from 'preact';
import { useEffect, useState } from 'preact/hooks';

type Listener = (path: string) => void;
const listeners = new Set<Listener>();

export function currentPath(): string {
  return typeof location === 'undefined' ? '/' : location.pathname + location.search;
}

function emit(): void {
  const p = currentPath();
  for (const f of Array.from(listeners)) f(p);
}

if (typeof window !== 'undefined') window.addEventListener('popstate', emit);

export function navigate(to: string, replace = false): void {
  if (to === currentPath()) return;
  if (replace) history.replaceState(null, '', to);
  else history.pushState(null, '', to);
  emit();
}

export function usePath(): string {
  const [path, setPath] = useState(currentPath());
  useEffect(() => {
    listeners.add(setPath);
    setPath(currentPath());
    return () => {
      listeners.delete(setPath);
    };
  }, []);
  return path;
}

/** Matches `/traffic/:name` against a path (query ignored); params are decoded. */
export function match(pattern: string, path: string): Record<string, string> | null {
  const clean = path.split('?')[0].split('#')[0];
  const a = pattern.split('/').filter(Boolean);
  const b = clean.split('/').filter(Boolean);
  if (a.length !== b.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < a.length; i++) {
    if (a[i].startsWith(':')) {
      try {
        params[a[i].slice(1)] = decodeURIComponent(b[i]);
      } catch {
        return null;
      }
    } else if (a[i] !== b[i]) {
      return null;
    }
  }
  return params;
}

export function query(path: string): URLSearchParams {
  const i = path.indexOf('?');
  return new URLSearchParams(i < 0 ? '' : path.slice(i + 1));
}

interface LinkProps {
  href: string;
  class?: string;
  children?: ComponentChildren;
  [attr: string]: unknown;
}

export function Link({ href, children, ...rest }: LinkProps) {
  const onClick = (e: MouseEvent) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
  };
  return h('a', { href, onClick, ...rest }, children);
}
