// What each console role may do, mirroring the server's rules (src/model/kinds.rs
// `writers`, audit.rs `may_read`). The server stays the judge: this only hides controls.

const OPERATOR_KINDS = new Set(['apps', 'trafficrules', 'releases', 'artifacts', 'instances']);

export function canWrite(role: string | undefined, kind: string): boolean {
  if (role === 'admin') return kind !== 'events';
  if (role === 'operator') return OPERATOR_KINDS.has(kind);
  return false;
}

export function canReadAudit(role: string | undefined): boolean {
  return role === 'admin' || role === 'approver';
}
