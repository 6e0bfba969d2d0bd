import { describe, expect, it } from 'vitest';
import { daysLeft } from '../src/pages/ResourceList';

describe('certificate expiry', () => {
  const now = Date.parse('2026-11-30T12:00:00Z');
  it('counts whole days left, negative once past', () => {
    expect(daysLeft('2026-12-10T12:00:00Z', now)).toBe(10);
    expect(daysLeft('2026-12-01T11:59:59Z', now)).toBe(0);
    expect(daysLeft('2026-11-29T12:00:00Z', now)).toBe(-1);
  });
  it('knows nothing of what is not a time', () => {
    expect(daysLeft(undefined, now)).toBeNull();
    expect(daysLeft('soon', now)).toBeNull();
    expect(daysLeft(42, now)).toBeNull();
  });
});
