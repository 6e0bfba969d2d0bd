import { canWrite } from '../src/lib/perms';

export function perms(): Record<string, string[]> {
  const kinds = ['apps', 'datasources', 'events', 'trafficrules', 'units'];
  const out: Record<string, string[]> = {};
  for (const r of ['admin', 'operator', 'approver', 'viewer']) out[r] = kinds.filter((k) => canWrite(r, k));
  return out;
}
