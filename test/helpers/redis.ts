// Per-test access to the run's throwaway Redis: its URL and a unique key prefix for isolation.
import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';

export function testRedisUrl(): string {
  return inject('redisUrl');
}

/** A fresh key prefix so tests sharing the one redis-server never see each other's keys. */
export function uniquePrefix(): string {
  return `t${randomBytes(4).toString('hex')}:`;
}
