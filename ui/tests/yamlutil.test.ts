import { describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { editable, errorLine, fieldLine, maskSecrets, parseField, setRevision, unmask } from '../src/lib/yamlutil';

const RULE = `apiVersion: tessera.io/v1
kind: TrafficRule
metadata:
  name: echo
  revision: 15
spec:
  app: echo
  pathPrefix: /
  routeBy: unit
  foo: 1
  routingKey:
    source: header
    name: x-uid
`;

describe('fieldLine', () => {
  it('finds the line of the field the server names', () => {
    expect(fieldLine(RULE, 'document 1: spec.foo')).toBe(10);
    expect(fieldLine(RULE, 'spec.routingKey.name')).toBe(13);
    expect(fieldLine(RULE, 'metadata.revision')).toBe(5);
  });
  it('falls back to the nearest parent that is written', () => {
    expect(fieldLine(RULE, 'document 1: spec.canary.weight')).toBe(6);
  });
  it('looks in the right document', () => {
    const two = `kind: A\nspec:\n  x: 1\n---\nkind: B\nspec:\n  y: 2\n  x: 3\n`;
    expect(fieldLine(two, 'document 2: spec.x')).toBe(8);
    expect(fieldLine(two, 'document 1: spec.x')).toBe(3);
    expect(fieldLine(two, 'document 3: spec.x')).toBeNull();
  });
  it('handles list items and index segments', () => {
    const ds = `spec:\n  shards:\n  - unit: rz00\n    primary: a\n`;
    expect(parseField('document 1: spec.shards[0].primary')).toEqual({ doc: 1, path: ['spec', 'shards', 'primary'] });
    expect(fieldLine(ds, 'spec.shards[0].primary')).toBe(4);
  });
  it('uses the line a syntax error names when no field matches', () => {
    expect(errorLine(RULE, 'document 1', 'did not find expected , at line 9 column 1')).toBe(9);
    expect(errorLine(RULE, null, 'nothing')).toBeNull();
  });
});

describe('editable YAML', () => {
  it('drops status and server-managed metadata but keeps name and revision', () => {
    const r = editable({
      apiVersion: 'tessera.io/v1',
      kind: 'Instance',
      metadata: { name: 'i', revision: 7, createdAt: '2026-01-01T00:00:00Z', labels: { a: 'b' } },
      spec: { app: 'x' },
      status: { ready: true },
    });
    expect(r).toEqual({ apiVersion: 'tessera.io/v1', kind: 'Instance', metadata: { name: 'i', labels: { a: 'b' }, revision: 7 }, spec: { app: 'x' } });
  });

  it('masks sealed secrets and restores them for the save', () => {
    const obj = { spec: { password: 'enc:v1:abcd', proxyUsers: [{ name: 'u', password: 'enc:v1:ef01' }], user: 'root' } };
    const { obj: masked, secrets } = maskSecrets(obj);
    const text = stringify(masked);
    expect(text).not.toContain('enc:v1');
    expect(text).toContain('••••••••');
    expect(parse(unmask(text, secrets))).toEqual(obj);
  });

  it('sets the revision without touching the rest of the text', () => {
    const edited = RULE.replace('pathPrefix: /', 'pathPrefix: /shop');
    const out = setRevision(edited, 99);
    expect(out).toContain('  revision: 99\n');
    expect(out).toContain('pathPrefix: /shop');
  });
});
