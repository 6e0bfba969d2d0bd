import { describe, expect, it } from 'vitest';
import { en } from '../src/i18n/en';
import { zh } from '../src/i18n/zh';
import { detect, dictionaries, setLang, t } from '../src/i18n';

describe('dictionaries', () => {
  it('have exactly the same keys', () => {
    expect(Object.keys(zh).sort()).toEqual(Object.keys(en).sort());
  });

  it('have no empty values', () => {
    for (const d of Object.values(dictionaries)) {
      for (const [k, v] of Object.entries(d)) expect(v.trim(), k).not.toBe('');
    }
  });

  it('use the same {placeholders} in both languages', () => {
    const ph = (s: string) => (s.match(/\{[a-z]+\}/gi) ?? []).sort();
    for (const k of Object.keys(en) as (keyof typeof en)[]) expect(ph(zh[k]), k).toEqual(ph(en[k]));
  });
});

describe('language choice', () => {
  it('prefers the stored choice, then navigator.language', () => {
    expect(detect('zh-CN', 'en-US')).toBe('zh-CN');
    expect(detect('en', 'zh-CN')).toBe('en');
    expect(detect(null, 'zh-TW')).toBe('zh-CN');
    expect(detect(null, 'de-DE')).toBe('en');
    expect(detect('fr', undefined)).toBe('en');
  });

  it('translates and interpolates, and remembers the switch', () => {
    setLang('zh-CN');
    expect(t('nav.overview')).toBe('概览');
    expect(localStorage.getItem('tessera.lang')).toBe('zh-CN');
    setLang('en');
    expect(t('editor.saved', { rev: 42 })).toBe('Saved at revision 42.');
  });
});
