// Gateway instances sharing one Redis, as several processes would, and the chat calls and quota
// reads the quota suites make against them.
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';
import { createRedisStore } from '../../src/store/redis-store.js';
import type { Store } from '../../src/store/store.js';
import { startGateway, UPSTREAM_KEY, type Gateway } from './gateway.js';
import { testRedisUrl, uniquePrefix } from './redis.js';

/** Two gateway instances on one Redis (own stores), one fake upstream; all pushed to `opened` to close. */
export async function twoInstances(
  opened: { close(): Promise<void> }[],
  opts: { env?: Record<string, string>; clock?: () => number; wrapStore?: (store: Store) => Store } = {},
): Promise<{ a: Gateway; b: Gateway; fake: FakeOpenAI }> {
  const prefix = uniquePrefix();
  const fake = await startFakeOpenAI({ apiKey: UPSTREAM_KEY });
  const raw = [await createRedisStore({ url: testRedisUrl(), prefix }), await createRedisStore({ url: testRedisUrl(), prefix })];
  const stores = raw.map((s) => opts.wrapStore?.(s) ?? s);
  const a = await startGateway({ store: stores[0], fake, env: opts.env, clock: opts.clock });
  const b = await startGateway({ store: stores[1], fake, env: opts.env, clock: opts.clock });
  opened.push(fake, ...raw, a, b);
  return { a, b, fake };
}

export const chatBody = (extra: Record<string, unknown> = {}) => ({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Tell me something' }],
  max_tokens: 20,
  ...extra,
});

export function chat(gw: Gateway, key: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify(chatBody(extra)),
  });
}

/** A key's quota as GET /admin/keys/{id} reports it. */
export async function quotaOf(gw: Gateway, id: string) {
  const res = await gw.admin('GET', `/admin/keys/${id}`);
  return res.body.quota as Record<string, { limit: number | null; used: number; reserved: number; resetsAt: string | null }>;
}
