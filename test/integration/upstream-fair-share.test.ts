// The upstream pool shared among gateway keys: one app's backlog does not stand in front of another's
// request (src/upstream/fair-share.ts), end to end through the gateway.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../helpers/gateway.js';

let gw: Gateway;

beforeAll(async () => {
  gw = await startGateway({ env: { UPSTREAM_MAX_CONNECTIONS: '2' } });
});
afterAll(() => gw.close());

const send = (key: string, who: string) =>
  fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 3, messages: [{ role: 'user', content: who }] }),
  }).then(async (res) => ({ status: res.status, body: await res.text() }));

const scrape = async () => (await fetch(`${gw.url}/metrics`)).text();

describe('upstream connections shared among keys', () => {
  it("one key's backlog waits for its own turns; another key's request takes the next free connection", async () => {
    const busy = await gw.createKey({ name: 'batch-job' });
    const quiet = await gw.createKey({ name: 'chat-app' });
    gw.fake.setLatency(400);
    try {
      const backlog = Array.from({ length: 10 }, (_, i) => send(busy.key, `busy ${i}`));
      await expect.poll(scrape).toMatch(/tollgate_upstream_connections\{state="waiting"\} 8/);
      expect(await scrape()).toMatch(/tollgate_upstream_connections\{state="busy"\} 2/);
      const answered = await send(quiet.key, 'quiet');
      expect(answered.status).toBe(200);
      expect((await Promise.all(backlog)).map((r) => r.status)).toEqual(Array(10).fill(200));
      const order = gw.fake.requests.map((r) => (r.body as { messages: { content: string }[] }).messages[0]!.content);
      // Served first come, first served, it went upstream 11th, after the whole backlog.
      expect(order.indexOf('quiet')).toBe(2);
      expect(await scrape()).toMatch(/tollgate_upstream_connections\{state="waiting"\} 0/);
    } finally {
      gw.fake.setLatency(0);
    }
  });
});
