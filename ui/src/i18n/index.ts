// The console's two languages. The choice is kept in localStorage; the default follows
// navigator.language. `t` reads the current dictionary; the app re-renders on a switch.
import { en, type Key } from './en';
import { zh } from './zh';

export type Lang = 'en' | 'zh-CN';
export type { Key };
export const LANGS: { id: Lang; label: string }[] = [
  { id: 'en', label: 'English' },
  { id: 'zh-CN', label: '简体中文' },
];
export const dictionaries: Record<Lang, Record<Key, string>> = { en, 'zh-CN': zh };
const STORAGE_KEY = 'tessera.lang';

export function detect(stored: string | null, navigatorLanguage: string | undefined): Lang {
  if (stored === 'en' || stored === 'zh-CN') return stored;
  return (navigatorLanguage ?? '').toLowerCase().startsWith('zh') ? 'zh-CN' : 'en';
}

function stored(): string | null {
  try {
    return localStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

let current: Lang = detect(stored(), typeof navigator === 'undefined' ? undefined : navigator.language);

export function lang(): Lang {
  return current;
}

export function setLang(l: Lang): void {
  current = l;
  try {
    localStorage.setItem(STORAGE_KEY, l);
  } catch {
    /* not kept */
  }
  if (typeof document !== 'undefined') document.documentElement.lang = l;
}

export function t(key: Key, params?: Record<string, string | number>): string {
  let s = dictionaries[current][key] ?? en[key] ?? key;
  if (params) {
    for (const k of Object.keys(params)) s = s.split(`{${k}}`).join(String(params[k]));
  }
  return s;
}
