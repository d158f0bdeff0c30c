// Budget alerts: createAlerts against a real store (memory, and Redis), a stub quota view and a real local webhook
// receiver: once per threshold per period and in order, retries, giving up, the queue bound, coalescing, and never throwing;
// then whole gateways (real Redis, fake upstream): a key blocked by its budget, and a limit lowered under its usage.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import pino from 'pino';
import { createAlerts, type Alerts, type AlertsOptions, type BudgetAlertEvent, type BudgetLimit } from '../../src/alerts/alerts.js';
import type { KeyRecord, Limits } from '../../src/keys.js';
import type { Quota } from '../../src/quota/quota.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import type { Store } from '../../src/store/store.js';
import { freePort } from '../helpers/redis-server.js';
import { testRedisUrl, uniquePrefix } from '../helpers/redis.js';
import { startGateway } from '../helpers/gateway.js';
import { chat, quotaOf, twoInstances } from '../helpers/instances.js';

type View = Awaited<ReturnType<Quota['view']>>;
type Used = Partial<Record<BudgetLimit, number>>;

// ---------------------------------------------------------------- helpers

class LogCapture extends Writable {
  readonly lines: Record<string, unknown>[] = [];
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void) {
    const s = chunk.toString('utf8');
    this.text += s;
    for (const line of s.split('\n')) if (line.trim()) this.lines.push(JSON.parse(line) as Record<string, unknown>);
    done();
  }
  withMsg(msg: string) {
    return this.lines.filter((l) => l.msg === msg);
  }
}

interface Received {
  headers: IncomingHttpHeaders;
  body: BudgetAlertEvent;
  at: number;
}

/** What the receiver does with one request: answer a status (with headers), hang up, or hold it until released. */
type Behaviour = { status: number; headers?: Record<string, string> } | 'hangup' | 'hold';

interface Receiver {
  url: string;
  port: number;
  /** Every request, failed attempts included, in arrival order. */
  requests: Received[];
  /** Requests answered 2xx. */
  delivered(): BudgetAlertEvent[];
  /** Behaviours for the next requests, in order; then 200. */
  script: Behaviour[];
  release(): void;
  close(): Promise<void>;
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function startReceiver(port = 0, path = '/hooks/alerts'): Promise<Receiver> {
  const requests: Received[] = [];
  const ok: BudgetAlertEvent[] = [];
  const held: ServerResponse[] = [];
  const script: Behaviour[] = [];
  const server: Server = createServer((req, res) => {
    let text = '';
    req.on('data', (d: Buffer) => (text += d.toString()));
    req.on('end', () => {
      const body = JSON.parse(text) as BudgetAlertEvent;
      requests.push({ headers: req.headers, body, at: Date.now() });
      const behaviour = script.shift() ?? { status: 200 };
      if (behaviour === 'hangup') return req.socket.destroy();
      if (behaviour === 'hold') return void held.push(res);
      if (behaviour.status >= 200 && behaviour.status < 300) ok.push(body);
      res.writeHead(behaviour.status, behaviour.headers).end();
    });
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  const actual = (server.address() as AddressInfo).port;
  const receiver: Receiver = {
    url: `http://127.0.0.1:${actual}${path}`,
    port: actual,
    requests,
    delivered: () => ok,
    script,
    release() {
      for (const res of held.splice(0)) {
        if (res.socket === null || res.socket.destroyed) continue; // the sender gave up on it (timeout, close)
        ok.push(requests.find((r) => r.headers === res.req.headers)!.body);
        res.writeHead(200).end();
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  cleanups.push(() => receiver.close());
  return receiver;
}

function keyRecord(limits: Limits, id = 'key_alerts1', name = 'billing-app'): KeyRecord {
  return {
    id,
    name,
    hash: 'f'.repeat(64),
    hint: 'tg-abcd...',
    models: null,
    limits,
    metadata: {},
    createdAt: '2026-11-01T00:00:00.000Z',
    updatedAt: '2026-11-01T00:00:00.000Z',
    revokedAt: null,
  };
}

/** A quota whose view reports the amounts the test sets (per key id), counting its calls. */
function stubQuota(initial: Used = {}) {
  const used: Record<string, Used> = {};
  const view = vi.fn(async (key: KeyRecord): Promise<View> => {
    const u = used[key.id] ?? initial;
    const l = key.limits;
    const line = (limit: number | undefined, value: number) => ({ limit: limit ?? null, used: value, reserved: 0, resetsAt: null });
    return {
      rpm: line(l.rpm, 0),
      tpm: line(l.tpm, 0),
      tokensPerDay: line(l.tokensPerDay, u.tokensPerDay ?? 0),
      tokensPerMonth: line(l.tokensPerMonth, u.tokensPerMonth ?? 0),
      usdPerDay: line(l.usdPerDay, u.usdPerDay ?? 0),
      usdPerMonth: line(l.usdPerMonth, u.usdPerMonth ?? 0),
      maxConcurrent: line(l.maxConcurrent, 0),
    };
  });
  return {
    quota: { view },
    view,
    set(u: Used, keyId = 'key_alerts1') {
      used[keyId] = u;
    },
  };
}

const NOON = Date.UTC(2026, 10, 30, 12); // 2026-11-30T12:00Z, the last day of a month

interface Setup {
  alerts: Alerts;
  logs: LogCapture;
  store: Store;
  clock: { now: number };
}

function setup(overrides: Partial<AlertsOptions> & { quota: Pick<Quota, 'view'> }, store: Store = createMemoryStore()): Setup {
  const logs = new LogCapture();
  const clock = { now: NOON };
  const alerts = createAlerts({
    store,
    clock: () => clock.now,
    timeZone: 'UTC',
    logger: pino({ level: 'debug' }, logs),
    baseDelayMs: 20,
    minCheckIntervalMs: 0,
    ...overrides,
  });
  cleanups.push(() => alerts.close());
  return { alerts, logs, store, clock };
}

async function waitFor(predicate: () => boolean, timeoutMs = 5000, what = 'condition') {
  const until = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const summary = (events: BudgetAlertEvent[]) => events.map((e) => `${e.limit}:${e.period.id}:${e.threshold}`);

// ---------------------------------------------------------------- tests

describe('thresholds', () => {
  it('fires each threshold once, in ascending order, with the documented event and headers', async () => {
    const receiver = await startReceiver();
    const stub = stubQuota();
    const { alerts } = setup({ webhookUrl: receiver.url, quota: stub.quota });
    const key = keyRecord({ usdPerDay: 10, rpm: 60 });

    stub.set({ usdPerDay: 4.99 });
    alerts.check(key);
    await alerts.drain();
    expect(receiver.requests).toHaveLength(0);

    stub.set({ usdPerDay: 8.2 }); // crosses 50 % and 80 % at once: two events, 50 first
    alerts.check(key);
    await alerts.drain();
    expect(summary(receiver.delivered())).toEqual(['usdPerDay:2026-11-30:0.5', 'usdPerDay:2026-11-30:0.8']);

    stub.set({ usdPerDay: 10.5 });
    alerts.check(key);
    await alerts.drain();
    expect(summary(receiver.delivered())).toEqual(['usdPerDay:2026-11-30:0.5', 'usdPerDay:2026-11-30:0.8', 'usdPerDay:2026-11-30:1']);

    const [first] = receiver.requests;
    expect(first!.headers['content-type']).toBe('application/json');
    expect(first!.headers['user-agent']).toBe('tollgate');
    expect(first!.headers['x-tollgate-event-id']).toBe(first!.body.id);
    expect(first!.body).toEqual({
      type: 'budget.threshold_crossed',
      id: expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/),
      time: '2026-11-30T12:00:00.000Z',
      key: { id: 'key_alerts1', name: 'billing-app' },
      limit: 'usdPerDay',
      period: { id: '2026-11-30', resetsAt: '2026-12-01T00:00:00.000Z' },
      threshold: 0.5,
      cause: 'spend',
      used: 8.2,
      limitValue: 10,
      ratio: 0.82,
    });
    expect(receiver.requests.at(-1)!.body).toMatchObject({ threshold: 1, used: 10.5, ratio: 1.05 });
    expect(new Set(receiver.requests.map((r) => r.body.id)).size).toBe(3);
  });

  it('does not fire again in the same period, and fires again in the next one', async () => {
    const receiver = await startReceiver();
    const stub = stubQuota({ usdPerDay: 9, tokensPerMonth: 600 });
    const { alerts, clock } = setup({ webhookUrl: receiver.url, quota: stub.quota });
    const key = keyRecord({ usdPerDay: 10, tokensPerMonth: 1000 });

    alerts.check(key);
    await alerts.drain();
    expect(summary(receiver.delivered())).toEqual(['usdPerDay:2026-11-30:0.5', 'usdPerDay:2026-11-30:0.8', 'tokensPerMonth:2026-11:0.5']);

    for (let i = 0; i < 5; i++) {
      clock.now += 60_000;
      alerts.check(key);
      await alerts.drain();
    }
    expect(receiver.requests).toHaveLength(3);

    // Past midnight, also the first of a month: both budgets start over.
    clock.now = Date.UTC(2026, 11, 1, 0, 0, 1);
    stub.set({ usdPerDay: 5, tokensPerMonth: 800 });
    alerts.check(key);
    await alerts.drain();
    expect(summary(receiver.delivered().slice(3))).toEqual(['usdPerDay:2026-12-01:0.5', 'tokensPerMonth:2026-12:0.5', 'tokensPerMonth:2026-12:0.8']);
    expect(receiver.requests.at(-1)!.body.period).toEqual({ id: '2026-12', resetsAt: '2027-01-01T00:00:00.000Z' });

    // The next day of the same month: the day budget again, not the month's.
    clock.now = Date.UTC(2026, 11, 2, 9);
    alerts.check(key);
    await alerts.drain();
    expect(summary(receiver.delivered().slice(6))).toEqual(['usdPerDay:2026-12-02:0.5']);
  });

  it('skips a day budget when its read straddles midnight, rather than charge the new day with the old one', async () => {
    const receiver = await startReceiver();
    const logs = new LogCapture();
    const clock = { now: Date.UTC(2026, 10, 29, 23, 59, 59, 990) };
    let used: Used = { usdPerDay: 9, usdPerMonth: 60 };
    const view = vi.fn(async (key: KeyRecord): Promise<View> => {
      const stub = await stubQuota(used).quota.view(key);
      clock.now = Date.UTC(2026, 10, 30, 0, 0, 0, 20); // the read took 30 ms, across midnight
      return stub;
    });
    const store = createMemoryStore();
    const alerts = createAlerts({
      webhookUrl: receiver.url,
      store,
      quota: { view },
      clock: () => clock.now,
      timeZone: 'UTC',
      logger: pino(logs),
      minCheckIntervalMs: 0,
    });
    cleanups.push(() => store.close(), () => alerts.close());
    const key = keyRecord({ usdPerDay: 10, usdPerMonth: 100 });
    alerts.check(key);
    await alerts.drain();
    expect(summary(receiver.delivered())).toEqual(['usdPerMonth:2026-11:0.5']); // same month on both sides

    used = { usdPerDay: 5, usdPerMonth: 60 };
    alerts.check(key);
    await alerts.drain();
    expect(summary(receiver.delivered())).toEqual(['usdPerMonth:2026-11:0.5', 'usdPerDay:2026-11-30:0.5']);
  });

  it('counts token budgets and honours custom thresholds, including a binary-fraction edge', async () => {
    const receiver = await startReceiver();
    const stub = stubQuota({ usdPerMonth: 2.4, tokensPerDay: 250 });
    const { alerts } = setup({ webhookUrl: receiver.url, quota: stub.quota, thresholds: [0.8, 0.25, 0.8] });
    alerts.check(keyRecord({ usdPerMonth: 3, tokensPerDay: 1000 }));
    await alerts.drain();
    // 2.4 / 3 is 0.7999999999999999 in floating point: still 80 %.
    expect(summary(receiver.delivered())).toEqual(['tokensPerDay:2026-11-30:0.25', 'usdPerMonth:2026-11:0.25', 'usdPerMonth:2026-11:0.8']);
  });

  it('marks thresholds in the store: a second instance sharing it sends nothing again', async () => {
    const receiver = await startReceiver();
    const store = createMemoryStore();
    cleanups.push(() => store.close());
    const stub = stubQuota({ usdPerDay: 10 });
    const a = setup({ webhookUrl: receiver.url, quota: stub.quota }, store);
    const b = setup({ webhookUrl: receiver.url, quota: stub.quota }, store);
    const key = keyRecord({ usdPerDay: 10 });
    a.alerts.check(key);
    b.alerts.check(key);
    await Promise.all([a.alerts.drain(), b.alerts.drain()]);
    expect(summary(receiver.delivered()).sort()).toEqual(['usdPerDay:2026-11-30:0.5', 'usdPerDay:2026-11-30:0.8', 'usdPerDay:2026-11-30:1']);
  });

  it('works the same with the Redis store, across instances', async () => {
    const receiver = await startReceiver();
    const prefix = uniquePrefix();
    const storeA = await createRedisStore({ url: testRedisUrl(), prefix });
    const storeB = await createRedisStore({ url: testRedisUrl(), prefix });
    cleanups.push(() => storeA.close(), () => storeB.close());
    const stub = stubQuota({ tokensPerDay: 900 });
    const a = setup({ webhookUrl: receiver.url, quota: stub.quota }, storeA);
    const b = setup({ webhookUrl: receiver.url, quota: stub.quota }, storeB);
    const key = keyRecord({ tokensPerDay: 1000 });
    await Promise.all([
      (async () => {
        for (let i = 0; i < 5; i++) {
          a.alerts.check(key);
          await a.alerts.drain();
        }
      })(),
      (async () => {
        for (let i = 0; i < 5; i++) {
          b.alerts.check(key);
          await b.alerts.drain();
        }
      })(),
    ]);
    expect(summary(receiver.delivered()).sort()).toEqual(['tokensPerDay:2026-11-30:0.5', 'tokensPerDay:2026-11-30:0.8']);

    // The next day, on either instance: again.
    b.clock.now = Date.UTC(2026, 11, 1, 8);
    b.alerts.check(key);
    await b.alerts.drain();
    expect(summary(receiver.delivered().slice(2))).toEqual(['tokensPerDay:2026-12-01:0.5', 'tokensPerDay:2026-12-01:0.8']);
  });
});

describe('delivery', () => {
  it('retries 500s, resets and refused connections with the same event id until it succeeds', async () => {
    // Nothing listens on the port at first: connection refused, then 500, a hang-up, then 200.
    const port = await freePort();
    const stub = stubQuota({ usdPerDay: 5 });
    const { alerts, logs } = setup({ webhookUrl: `http://127.0.0.1:${port}/hooks/alerts`, quota: stub.quota, baseDelayMs: 40, maxAttempts: 12 });
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await waitFor(() => logs.withMsg('alert webhook attempt failed').length >= 2, 5000, 'refused attempts');
    const receiver = await startReceiver(port);
    receiver.script.push({ status: 500 }, 'hangup');
    await alerts.drain();

    expect(receiver.delivered()).toHaveLength(1);
    expect(receiver.requests.length).toBe(3);
    const ids = new Set(receiver.requests.map((r) => r.headers['x-tollgate-event-id']));
    expect(ids).toEqual(new Set([receiver.delivered()[0]!.id]));
    const failures = logs.withMsg('alert webhook attempt failed');
    expect(failures.some((l) => l.error === 'ECONNREFUSED')).toBe(true);
    expect(failures.some((l) => l.error === 'HTTP 500')).toBe(true);
    expect(logs.withMsg('alert webhook delivery failed; giving up')).toHaveLength(0);
  });

  it('bounds each attempt with a timeout, and honours retry-after on 429 and 503', async () => {
    const receiver = await startReceiver();
    receiver.script.push('hold', { status: 503, headers: { 'retry-after': '1' } });
    const stub = stubQuota({ usdPerDay: 5 });
    const { alerts, logs } = setup({ webhookUrl: receiver.url, quota: stub.quota, baseDelayMs: 10, attemptTimeoutMs: 200 });
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await alerts.drain();
    receiver.release();

    expect(receiver.requests).toHaveLength(3);
    expect(logs.withMsg('alert webhook attempt failed').map((l) => l.error)).toEqual(['no answer within 200 ms', 'HTTP 503']);
    const [, second, third] = receiver.requests;
    expect(third!.at - second!.at).toBeGreaterThanOrEqual(950); // retry-after: 1, although the backoff is 10 ms
  });

  it('times an attempt out even when garbage collection runs while it waits (nodejs/node#57736)', async () => {
    const receiver = await startReceiver();
    receiver.script.push('hold');
    const stub = stubQuota({ usdPerDay: 5 });
    const { alerts, logs } = setup({ webhookUrl: receiver.url, quota: stub.quota, baseDelayMs: 10, attemptTimeoutMs: 200 });
    // A full GC every 20 ms: on Node 20 it collected an AbortSignal.timeout held only by AbortSignal.any,
    // and the held attempt then never ended.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const collecting = setInterval(gc, 20);
    cleanups.push(() => clearInterval(collecting));
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await waitFor(() => logs.withMsg('alert webhook attempt failed').length === 1, 5000, 'the held attempt to time out');
    clearInterval(collecting);
    await alerts.drain();
    receiver.release();

    expect(logs.withMsg('alert webhook attempt failed')[0]).toMatchObject({ error: 'no answer within 200 ms' });
    expect(receiver.delivered()).toHaveLength(1);
  });

  it('gives up after maxAttempts with an error log holding the event, not the webhook URL', async () => {
    const receiver = await startReceiver(0, '/hooks/secret-path-token-0123456789');
    receiver.script.push(...Array.from({ length: 10 }, () => ({ status: 500 })));
    const stub = stubQuota({ usdPerDay: 6 });
    const { alerts, logs } = setup({ webhookUrl: receiver.url, quota: stub.quota, maxAttempts: 3, baseDelayMs: 10 });
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await alerts.drain();

    expect(receiver.requests).toHaveLength(3);
    expect(receiver.delivered()).toHaveLength(0);
    const [gaveUp] = logs.withMsg('alert webhook delivery failed; giving up');
    expect(gaveUp).toMatchObject({ level: 50, attempts: 3, lastError: 'HTTP 500', event: { id: receiver.requests[0]!.body.id, threshold: 0.5 } });
    expect(logs.text).not.toContain('secret-path-token');

    // Given up is given up: the threshold stays marked for the period.
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await alerts.drain();
    expect(receiver.requests).toHaveLength(3);
  });

  it('keeps at most maxQueue events waiting, dropping the oldest with an error log', async () => {
    const receiver = await startReceiver();
    receiver.script.push('hold');
    const stub = stubQuota({ tokensPerDay: 1000 });
    const thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1];
    const { alerts, logs } = setup({ webhookUrl: receiver.url, quota: stub.quota, thresholds, maxQueue: 2, attemptTimeoutMs: 10_000 });
    alerts.check(keyRecord({ tokensPerDay: 1000 }));
    await waitFor(() => logs.withMsg('alert dropped: the webhook queue is full').length === 7, 5000, 'drops');
    receiver.release();
    await alerts.drain();

    expect(receiver.delivered().map((e) => e.threshold)).toEqual([0.1, 0.9, 1]);
    expect(logs.withMsg('alert dropped: the webhook queue is full').map((l) => (l.event as BudgetAlertEvent).threshold)).toEqual([
      0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
    ]);
    expect(logs.withMsg('alert dropped: the webhook queue is full')[0]).toMatchObject({ level: 50 });
  });

  it('close() stops at once: the attempt in flight is aborted and what is queued is dropped, logged', async () => {
    const receiver = await startReceiver();
    receiver.script.push('hold');
    const stub = stubQuota({ usdPerDay: 10 });
    const { alerts, logs } = setup({ webhookUrl: receiver.url, quota: stub.quota, attemptTimeoutMs: 10_000 });
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await waitFor(() => receiver.requests.length === 1, 5000, 'first attempt');
    alerts.close();
    const dropped = logs.withMsg('alert dropped: closed before it was delivered');
    expect(dropped.map((l) => (l.event as BudgetAlertEvent).threshold)).toEqual([0.5, 0.8, 1]);
    await alerts.drain(); // resolves at once after close
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await new Promise((r) => setTimeout(r, 50));
    expect(stub.view).toHaveBeenCalledTimes(1);
    expect(receiver.requests).toHaveLength(1);
  });
});

describe('delivery at shutdown', () => {
  it('drain(timeoutMs) returns while the webhook still hangs, and close() then logs every undelivered event in full, one line each', async () => {
    const receiver = await startReceiver(0, '/hooks/secret-path-token-0123456789');
    receiver.script.push(...Array.from({ length: 10 }, (): Behaviour => 'hold'));
    const stub = stubQuota({ usdPerDay: 10 });
    // Without a bound, drain() would wait out six attempts of a minute each.
    const { alerts, logs } = setup({ webhookUrl: receiver.url, quota: stub.quota, attemptTimeoutMs: 60_000 });
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await waitFor(() => receiver.requests.length === 1, 5000, 'first attempt');
    await alerts.drain(100);
    // Returned, though the first event's attempt is still held by the receiver.
    expect(receiver.requests).toHaveLength(1);
    expect(receiver.delivered()).toHaveLength(0);
    alerts.close();

    const dropped = logs.withMsg('alert dropped: closed before it was delivered');
    expect(dropped.map((l) => l.level)).toEqual([50, 50, 50]);
    expect(dropped.map((l) => (l.event as BudgetAlertEvent).threshold)).toEqual([0.5, 0.8, 1]);
    expect(dropped[0]).toMatchObject({ event: receiver.requests[0]!.body, webhook: new URL(receiver.url).origin });
    expect(logs.text).not.toContain('secret-path-token');
    receiver.release();
  });

  it('an event marked by a check still running when the alerts close is logged in full, not lost', async () => {
    const receiver = await startReceiver();
    const store = createMemoryStore();
    cleanups.push(() => store.close());
    let markNow: () => void = () => undefined;
    const marking = new Promise<void>((resolve) => (markNow = resolve));
    const markOnce = store.markOnce.bind(store);
    vi.spyOn(store, 'markOnce').mockImplementation(async (...args) => {
      await marking;
      return markOnce(...args);
    });
    const { alerts, logs } = setup({ webhookUrl: receiver.url, quota: stubQuota({ usdPerDay: 6 }).quota }, store);
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await alerts.drain(50); // the check is still waiting for its mark
    alerts.close();
    markNow();
    await waitFor(() => logs.withMsg('alert dropped: the alert sender is closed').length === 1, 5000, 'the dropped event');
    expect(logs.withMsg('alert dropped: the alert sender is closed')[0]).toMatchObject({ level: 50, event: { threshold: 0.5, key: { id: 'key_alerts1' } } });
    expect(receiver.requests).toHaveLength(0);
  });

  it('a gateway closing while the webhook hangs still closes, logging the undelivered event in full', async () => {
    const receiver = await startReceiver(0, '/hooks/secret-path-token-0123456789');
    receiver.script.push(...Array.from({ length: 10 }, (): Behaviour => 'hold'));
    const gw = await startGateway({ env: { ALERT_WEBHOOK_URL: receiver.url, SHUTDOWN_TIMEOUT_MS: '0' } });
    const { id, key } = await gw.createKey({ name: 'hung-webhook', limits: { tokensPerDay: 100_000 } });
    const res = await chat(gw, key);
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    await expect.poll(async () => (await quotaOf(gw, id)).tokensPerDay!.reserved).toBe(0); // settled
    const used = (await quotaOf(gw, id)).tokensPerDay!.used;
    expect((await gw.admin('PATCH', `/admin/keys/${id}`, { limits: { tokensPerDay: used } })).status).toBe(200);
    await waitFor(() => receiver.requests.length === 1, 5000, 'first attempt');
    // Unbounded, close() would wait for six attempts of 5 s each on the held request.
    await gw.close();
    expect(receiver.requests).toHaveLength(1);
    expect(receiver.delivered()).toHaveLength(0);
    const dropped = gw.logs.lines.filter((l) => l.msg === 'alert dropped: closed before it was delivered');
    expect(dropped.length).toBeGreaterThan(0);
    for (const line of dropped) expect(line).toMatchObject({ level: 50, event: { type: 'budget.threshold_crossed', key: { id } } });
    expect(dropped[0]!.event).toEqual(receiver.requests[0]!.body);
    expect(gw.logs.text).not.toContain('secret-path-token');
    receiver.release();
  }, 20_000);

  it('never logs the webhook URL past its origin, even when fetch quotes it whole in an error', async () => {
    // fetch refuses a URL with credentials before sending, quoting it: "... credentials: http://u:pass@host/hook/..."
    const url = 'http://alertuser:hunter2secret@127.0.0.1:9/hook/SECRETPATH0123?token=querysecret';
    const { alerts, logs } = setup({ webhookUrl: url, quota: stubQuota({ usdPerDay: 6 }).quota, maxAttempts: 2, baseDelayMs: 1 });
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await alerts.drain();
    const failed = logs.withMsg('alert webhook attempt failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]!.error).toContain('http://127.0.0.1:9');
    expect(logs.withMsg('alert webhook delivery failed; giving up')[0]).toMatchObject({ webhook: 'http://127.0.0.1:9' });
    for (const secret of ['alertuser', 'hunter2secret', 'SECRETPATH0123', 'querysecret', '/hook']) expect(logs.text).not.toContain(secret);
  });
});

describe('checks', () => {
  it('never throws, even when the quota view rejects or throws, and logs the failure', async () => {
    const receiver = await startReceiver();
    const view = vi.fn((): Promise<View> => {
      throw new Error('redis is down');
    });
    const { alerts, logs } = setup({ webhookUrl: receiver.url, quota: { view } });
    expect(() => alerts.check(keyRecord({ usdPerDay: 10 }))).not.toThrow();
    await alerts.drain();
    const rejecting = setup({ webhookUrl: receiver.url, quota: { view: () => Promise.reject(new Error('timeout')) } });
    expect(() => rejecting.alerts.check(keyRecord({ usdPerDay: 10 }))).not.toThrow();
    await rejecting.alerts.drain();
    expect(() => alerts.check(null as unknown as KeyRecord)).not.toThrow();
    expect(() => alerts.check({ id: 'key_x' } as KeyRecord)).not.toThrow();

    expect(view).toHaveBeenCalledTimes(1);
    expect(logs.withMsg('budget alert check failed')[0]).toMatchObject({ level: 40, err: 'redis is down', keyId: 'key_alerts1' });
    expect(rejecting.logs.withMsg('budget alert check failed')[0]).toMatchObject({ err: 'timeout' });
    expect(receiver.requests).toHaveLength(0);
  });

  it('never throws when the store fails to mark, and tries again on the next check', async () => {
    const receiver = await startReceiver();
    const store = createMemoryStore();
    cleanups.push(() => store.close());
    let failing = true;
    const flaky = new Proxy(store, {
      get(target, prop, receiverObj) {
        if (prop === 'markOnce' && failing) return () => Promise.reject(new Error('store unavailable'));
        const value = Reflect.get(target, prop, receiverObj);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as Store;
    const stub = stubQuota({ usdPerDay: 5 });
    const { alerts, logs } = setup({ webhookUrl: receiver.url, quota: stub.quota }, flaky);
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await alerts.drain();
    expect(receiver.requests).toHaveLength(0);
    expect(logs.withMsg('budget alert check failed')[0]).toMatchObject({ err: 'store unavailable' });

    failing = false;
    alerts.check(keyRecord({ usdPerDay: 10 }));
    await alerts.drain();
    expect(summary(receiver.delivered())).toEqual(['usdPerDay:2026-11-30:0.5']);
  });

  it('does nothing without a webhook URL, or for a key without a budget', async () => {
    const receiver = await startReceiver();
    const stub = stubQuota({ usdPerDay: 100 });
    const store = createMemoryStore();
    cleanups.push(() => store.close());
    const markOnce = vi.spyOn(store, 'markOnce');
    const off = setup({ quota: stub.quota }, store);
    off.alerts.check(keyRecord({ usdPerDay: 10 }));
    await off.alerts.drain();
    off.alerts.close();

    const on = setup({ webhookUrl: receiver.url, quota: stub.quota }, store);
    on.alerts.check(keyRecord({ rpm: 10, tpm: 1000, maxConcurrent: 2 }));
    on.alerts.check(keyRecord({}));
    await on.alerts.drain();

    expect(stub.view).not.toHaveBeenCalled();
    expect(markOnce).not.toHaveBeenCalled();
    expect(receiver.requests).toHaveLength(0);
    expect(off.logs.lines).toHaveLength(0);
  });

  it('reads usage at most once per key per interval, coalescing the checks in between', async () => {
    const receiver = await startReceiver();
    const stub = stubQuota({ usdPerDay: 1 });
    const { alerts } = setup({ webhookUrl: receiver.url, quota: stub.quota, minCheckIntervalMs: 300 });
    const key = keyRecord({ usdPerDay: 10 });
    const other = keyRecord({ usdPerDay: 10 }, 'key_other');

    for (let i = 0; i < 50; i++) alerts.check(key);
    alerts.check(other);
    await waitFor(() => stub.view.mock.calls.length === 2, 1000, 'first reads');
    expect(stub.view.mock.calls.map(([k]) => k.id)).toEqual(['key_alerts1', 'key_other']);

    // The coalesced check runs once, at the end of the interval, with the latest record of the key.
    stub.set({ usdPerDay: 5 });
    alerts.check(keyRecord({ usdPerDay: 6 }));
    await new Promise((r) => setTimeout(r, 150));
    expect(stub.view).toHaveBeenCalledTimes(2);
    await waitFor(() => stub.view.mock.calls.length === 3, 1000, 'the coalesced read');
    expect(stub.view.mock.calls[2]![0].limits).toEqual({ usdPerDay: 6 });
    await new Promise((r) => setTimeout(r, 400));
    expect(stub.view).toHaveBeenCalledTimes(3);
    await alerts.drain();
    expect(summary(receiver.delivered())).toEqual(['usdPerDay:2026-11-30:0.5', 'usdPerDay:2026-11-30:0.8']);
  });

  it('drain() runs a coalesced check at once instead of waiting out the interval', async () => {
    const receiver = await startReceiver();
    const stub = stubQuota({ usdPerDay: 0 });
    const { alerts } = setup({ webhookUrl: receiver.url, quota: stub.quota, minCheckIntervalMs: 60_000 });
    const key = keyRecord({ usdPerDay: 10 });
    alerts.check(key);
    await waitFor(() => stub.view.mock.calls.length === 1);
    stub.set({ usdPerDay: 10 });
    alerts.check(key);
    const started = Date.now();
    await alerts.drain();
    expect(Date.now() - started).toBeLessThan(5000);
    expect(stub.view).toHaveBeenCalledTimes(2);
    expect(receiver.delivered()).toHaveLength(3);
  });
});

/** Wraps each store it is given, counting the calls the alerts make (usage reads and marks), one counter per store. */
function countingStores(counters: { markOnce: number; quotaUsage: number }[]) {
  return (store: Store): Store => {
    const counts = { markOnce: 0, quotaUsage: 0 };
    counters.push(counts);
    return new Proxy(store, {
      get(target, prop, receiverObj) {
        const value = Reflect.get(target, prop, receiverObj) as unknown;
        if (typeof value !== 'function') return value;
        const fn = value as (...args: unknown[]) => unknown;
        if (prop === 'markOnce' || prop === 'quotaUsage') {
          return (...args: unknown[]) => {
            counts[prop]++;
            return fn.apply(target, args);
          };
        }
        return fn.bind(target);
      },
    }) as Store;
  };
}

describe('exhausted: a budget refusing requests', () => {
  it('sends the 100 % event once per period on a refusal past what is left, though the spend is below the limit, and then costs nothing', async () => {
    const receiver = await startReceiver();
    const store = createMemoryStore();
    cleanups.push(() => store.close());
    const markOnce = vi.spyOn(store, 'markOnce');
    const stub = stubQuota({ usdPerDay: 9.2 });
    const { alerts, clock } = setup({ webhookUrl: receiver.url, quota: stub.quota }, store);
    const key = keyRecord({ usdPerDay: 10, tokensPerDay: 1000 });

    alerts.check(key);
    await alerts.drain();
    expect(summary(receiver.delivered())).toEqual(['usdPerDay:2026-11-30:0.5', 'usdPerDay:2026-11-30:0.8']);

    // A refusal only because other requests are in flight ($9.20 spent, this one may cost $0.50): they may settle
    // for less, so it says nothing, and a later refusal is looked at again.
    alerts.refused(key, 'usdPerDay', 0.5);
    await alerts.drain();
    expect(receiver.delivered()).toHaveLength(2);

    // Admission refuses what would go past the limit: the spend stays at 92 %, and only the refusal says it is blocked.
    alerts.refused(key, 'usdPerDay', 1);
    await alerts.drain();
    expect(summary(receiver.delivered())).toEqual(['usdPerDay:2026-11-30:0.5', 'usdPerDay:2026-11-30:0.8', 'usdPerDay:2026-11-30:1']);
    expect(receiver.delivered()[2]).toMatchObject({ threshold: 1, cause: 'refusal', used: 9.2, limitValue: 10, ratio: 0.92 });
    expect(receiver.delivered()[0]).toMatchObject({ threshold: 0.5, cause: 'spend' });

    // A flood of refusals afterwards: no usage read, no store call, no event.
    const reads = stub.view.mock.calls.length;
    const marks = markOnce.mock.calls.length;
    for (let i = 0; i < 1000; i++) alerts.refused(key, 'usdPerDay', 1);
    await alerts.drain();
    expect(stub.view.mock.calls.length).toBe(reads);
    expect(markOnce.mock.calls.length).toBe(marks);
    // The spend reaching the limit later is its own event (the refusal did not use up the spend's mark).
    stub.set({ usdPerDay: 10 });
    alerts.check(key);
    await alerts.drain();
    expect(summary(receiver.delivered().slice(3))).toEqual(['usdPerDay:2026-11-30:1']);
    expect(receiver.delivered()[3]).toMatchObject({ cause: 'spend', ratio: 1 });

    // The next day, a refusal early in it (a large request at 30 %) raises 100 % again, and only 100 %.
    clock.now = Date.UTC(2026, 11, 1, 9);
    stub.set({ usdPerDay: 3 });
    for (let i = 0; i < 50; i++) alerts.refused(key, 'usdPerDay', 7.5);
    await alerts.drain();
    expect(summary(receiver.delivered().slice(4))).toEqual(['usdPerDay:2026-12-01:1']);
    expect(receiver.delivered()[4]).toMatchObject({ cause: 'refusal', ratio: 0.3, period: { id: '2026-12-01', resetsAt: '2026-12-02T00:00:00.000Z' } });
    expect(stub.view.mock.calls.length).toBe(reads + 2);
  });

  it('a refusal of a limit the key does not have, or without a 100 % threshold, sends nothing', async () => {
    const receiver = await startReceiver();
    const stub = stubQuota({ usdPerDay: 9 });
    const { alerts } = setup({ webhookUrl: receiver.url, quota: stub.quota });
    alerts.refused(keyRecord({ usdPerDay: 10 }), 'tokensPerMonth', 5);
    const noExhausted = setup({ webhookUrl: receiver.url, quota: stub.quota, thresholds: [0.5, 0.8] });
    noExhausted.alerts.refused(keyRecord({ usdPerDay: 10 }), 'usdPerDay', 5);
    expect(() => alerts.refused(null as unknown as KeyRecord, 'usdPerDay', 5)).not.toThrow();
    await Promise.all([alerts.drain(), noExhausted.alerts.drain()]);
    expect(stub.view).not.toHaveBeenCalled();
    expect(receiver.requests).toHaveLength(0);
  });

  it('refusals on two instances sharing Redis send one event, each instance asking the store at most once', async () => {
    const receiver = await startReceiver();
    const prefix = uniquePrefix();
    const counters: { markOnce: number; quotaUsage: number }[] = [];
    const wrap = countingStores(counters);
    const storeA = await createRedisStore({ url: testRedisUrl(), prefix });
    const storeB = await createRedisStore({ url: testRedisUrl(), prefix });
    cleanups.push(() => storeA.close(), () => storeB.close());
    const stub = stubQuota({ tokensPerMonth: 2100 }); // under 50 %: the refusal's event alone
    const a = setup({ webhookUrl: receiver.url, quota: stub.quota }, wrap(storeA));
    const b = setup({ webhookUrl: receiver.url, quota: stub.quota }, wrap(storeB));
    const key = keyRecord({ tokensPerMonth: 5000 });
    for (let i = 0; i < 200; i++) (i % 2 ? a : b).alerts.refused(key, 'tokensPerMonth', 3000);
    await Promise.all([a.alerts.drain(), b.alerts.drain()]);
    for (let i = 0; i < 200; i++) (i % 2 ? a : b).alerts.refused(key, 'tokensPerMonth', 3000);
    await Promise.all([a.alerts.drain(), b.alerts.drain()]);
    expect(summary(receiver.delivered())).toEqual(['tokensPerMonth:2026-11:1']);
    expect(receiver.delivered()[0]).toMatchObject({ cause: 'refusal', used: 2100, ratio: 0.42 });
    expect(counters).toEqual([
      { markOnce: 1, quotaUsage: 0 },
      { markOnce: 1, quotaUsage: 0 },
    ]); // the quota view is the stub's: only the marks reach the store
    expect(stub.view).toHaveBeenCalledTimes(2);
  });
});

describe('in the gateway', () => {
  it('a key blocked by its budget raises the exhausted alert once across instances; a flood of refusals asks the store nothing more', async () => {
    const receiver = await startReceiver();
    const opened: { close(): Promise<void> }[] = [];
    cleanups.push(async () => {
      for (const r of opened.reverse()) await r.close();
    });
    const counters: { markOnce: number; quotaUsage: number }[] = [];
    const { a, b } = await twoInstances(opened, { env: { ALERT_WEBHOOK_URL: receiver.url }, wrapStore: countingStores(counters) });
    // 97 is prime: whatever one request costs, the spend cannot land on the limit exactly.
    const LIMIT = 97;
    const { id, key } = await a.createKey({ name: 'blocked-app', limits: { tokensPerDay: LIMIT } });

    // Larger than the whole budget: refused, but the budget is not what blocks the key (smaller requests pass).
    const tooLarge = await chat(a, key, { max_tokens: LIMIT });
    expect(tooLarge.status).toBe(429);
    expect(await tooLarge.json()).toMatchObject({ error: { code: 'insufficient_quota' } });

    // Small requests until the budget refuses one: admission keeps the spend below the limit.
    let refused: Response | undefined;
    for (let i = 0; i < LIMIT && !refused; i++) {
      const res = await chat(a, key, { max_tokens: 1 });
      if (res.status === 429) refused = res;
      else expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    expect(refused?.headers.get('x-should-retry')).toBe('false');
    const used = (await quotaOf(a, id)).tokensPerDay!.used;
    expect(used).toBeLessThan(LIMIT);
    expect(used).toBeGreaterThanOrEqual(0.8 * LIMIT);

    await waitFor(() => receiver.delivered().some((e) => e.threshold === 1), 5000, 'the exhausted alert');
    const exhausted = receiver.delivered().find((e) => e.threshold === 1)!;
    expect(exhausted).toMatchObject({ key: { id, name: 'blocked-app' }, limit: 'tokensPerDay', cause: 'refusal', limitValue: LIMIT });
    // Raised by the refusal near the limit, not by the whole-budget one at the start (nothing spent then).
    expect(exhausted.used).toBeGreaterThanOrEqual(0.5 * LIMIT);
    expect(exhausted.ratio).toBeLessThan(1);

    // A flood of refusals on both instances: instance a knows the event is sent; b, which saw none of the spend,
    // learns it from the store once (one usage read, one mark per threshold: all already set).
    const before = counters.map((c) => ({ ...c }));
    const flood = await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        const res = await chat(i % 2 ? b : a, key, { max_tokens: 5 });
        await res.arrayBuffer();
        return res.status;
      }),
    );
    expect(new Set(flood)).toEqual(new Set([429]));
    await a.close();
    await b.close(); // both drained: every check that was due has run, every event is delivered
    expect(counters[0]).toEqual(before[0]);
    expect(counters[1]!.markOnce - before[1]!.markOnce).toBeLessThanOrEqual(3);
    expect(counters[1]!.quotaUsage - before[1]!.quotaUsage).toBeLessThanOrEqual(1);
    expect(receiver.delivered().map((e) => `${e.limit}:${e.threshold}:${e.cause}`)).toEqual([
      'tokensPerDay:0.5:spend',
      'tokensPerDay:0.8:spend',
      'tokensPerDay:1:refusal',
    ]);
  });

  it('a PATCH lowering a limit to the current usage raises the alerts at once, with no request needed', async () => {
    const receiver = await startReceiver();
    const gw = await startGateway({ env: { REDIS_URL: testRedisUrl(), REDIS_PREFIX: uniquePrefix(), ALERT_WEBHOOK_URL: receiver.url } });
    cleanups.push(() => gw.close());
    const { id, key } = await gw.createKey({ name: 'lowered', limits: { tokensPerDay: 100_000, rpm: 100 } });
    const res = await chat(gw, key);
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    await expect.poll(async () => (await quotaOf(gw, id)).tokensPerDay!.reserved).toBe(0); // settled
    const used = (await quotaOf(gw, id)).tokensPerDay!.used;
    expect(used).toBeGreaterThan(0);
    expect(used).toBeLessThan(0.5 * 100_000); // nothing to alert about yet

    const patched = await gw.admin('PATCH', `/admin/keys/${id}`, { limits: { tokensPerDay: used, rpm: 100 } });
    expect(patched.status).toBe(200);
    await waitFor(() => receiver.delivered().length === 3, 5000, 'the alerts of the lowered limit');
    expect(receiver.delivered().map((e) => `${e.limit}:${e.threshold}:${e.cause}:${e.ratio}`)).toEqual([
      'tokensPerDay:0.5:spend:1',
      'tokensPerDay:0.8:spend:1',
      'tokensPerDay:1:spend:1',
    ]);
    expect(receiver.delivered()[2]).toMatchObject({ key: { id, name: 'lowered' }, used, limitValue: used });

    // A PATCH that changes no limit looks at nothing; one raising it again sends nothing new this period.
    expect((await gw.admin('PATCH', `/admin/keys/${id}`, { name: 'renamed' })).status).toBe(200);
    expect((await gw.admin('PATCH', `/admin/keys/${id}`, { limits: { tokensPerDay: 100_000 } })).status).toBe(200);
    await gw.close();
    expect(receiver.delivered()).toHaveLength(3);
  });
});
