// Which store errors mean "Redis could not answer" (degraded mode, 503) and which are answers.
import { describe, expect, it } from 'vitest';
import { isOutageError, StoreUnavailableError } from '../../src/resilience/store-health.js';

describe('isOutageError', () => {
  it.each([
    'Connection is closed.',
    'Command timed out',
    'connect ECONNREFUSED 127.0.0.1:7103',
    'CLUSTERDOWN The cluster is down',
    // ioredis wraps the last error once a command has been redirected too often (a failover, a resharding).
    'Too many Cluster redirections. Last error: ReplyError: CLUSTERDOWN The cluster is down',
    'TRYAGAIN Multiple keys request during rehashing of slot',
    'LOADING Redis is loading the dataset in memory',
    "READONLY You can't write against a read only replica.",
  ])('takes "%s" for an outage', (message) => {
    expect(isOutageError(new Error(message))).toBe(true);
  });

  it.each([
    'ERR Error running script (call to f_1234): @user_script:12: reservation r1 already exists',
    'WRONGTYPE Operation against a key holding the wrong kind of value',
    'ERR unknown command',
  ])('takes "%s" for an answer, not an outage', (message) => {
    expect(isOutageError(new Error(message))).toBe(false);
  });

  it('knows its own kinds', () => {
    expect(isOutageError(new StoreUnavailableError())).toBe(true);
    expect(isOutageError(new RangeError('timed out'))).toBe(false);
    expect(isOutageError('timed out')).toBe(false);
  });
});
