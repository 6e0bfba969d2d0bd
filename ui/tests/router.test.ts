import { describe, expect, it } from 'vitest';
import { active } from '../src/components/Layout';
import { match, navigate, query } from '../src/lib/router';
import { perms } from './perms-helper';

describe('router', () => {
  it('matches patterns and decodes params', () => {
    expect(match('/traffic/:name', '/traffic/echo%2Dv2')).toEqual({ name: 'echo-v2' });
    expect(match('/traffic/:name', '/traffic')).toBeNull();
    expect(match('/audit', '/audit?after=3')).toEqual({});
    expect(query('/audit?after=3&kind=App').get('kind')).toBe('App');
  });
  it('navigates with the history API', () => {
    navigate('/apps');
    expect(location.pathname).toBe('/apps');
    history.back();
  });
  it('marks the active nav entry', () => {
    expect(active('/', '/')).toBe(true);
    expect(active('/traffic/echo', '/traffic')).toBe(true);
    expect(active('/traffic', '/')).toBe(false);
  });
  it('offers writes by role as the server allows them', () => {
    expect(perms()).toEqual({
      admin: ['apps', 'datasources', 'trafficrules', 'units'],
      operator: ['apps', 'trafficrules'],
      approver: [],
      viewer: [],
    });
  });
});
