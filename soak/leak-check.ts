// Heap after forced GCs between rounds of traffic: a flat line means no per-request leak.
//   node --expose-gc --import tsx soak/leak-check.ts
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { startFakeOpenAI } from '../src/fake-openai/server.js';
import { startRedisServer } from '../test/helpers/redis-server.js';

const gc = (globalThis as { gc?: () => void }).gc!;
const redis = await startRedisServer();
const fake = await startFakeOpenAI({ apiKey: 'sk-x' });
const config = loadConfig({ OPENAI_API_KEY: 'sk-x', OPENAI_BASE_URL: fake.url, REDIS_URL: redis.url, ADMIN_TOKEN: 'leak-check-admin-token', LOG_LEVEL: 'warn' });
const app = await buildApp(config);
const url = await app.listen({ port: 0, host: '127.0.0.1' });
const created = await fetch(`${url}/admin/keys`, { method: 'POST', headers: { authorization: 'Bearer leak-check-admin-token', 'content-type': 'application/json' }, body: JSON.stringify({ name: 'leak', limits: { rpm: 1e9, tokensPerDay: 1e12 } }) });
const { key } = (await created.json()) as { key: string };
let n = 0;
async function round(count: number) {
  const workers = Array.from({ length: 20 }, async () => {
    while (n < count) {
      const i = n++;
      const stream = i % 4 === 0;
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: i % 3 === 0 ? 'same' : `q ${i}` }], max_tokens: 20, stream }),
      });
      await res.text();
    }
  });
  await Promise.all(workers);
}
for (let r = 1; r <= 4; r++) {
  await round(r * 5000);
  await new Promise((res) => setTimeout(res, 1000));
  gc();
  gc();
  console.log(`after ${r * 5000} requests: heap used ${Math.round(process.memoryUsage().heapUsed / 1048576)} MB, rss ${Math.round(process.memoryUsage().rss / 1048576)} MB`);
}
await app.close();
await fake.close();
await redis.stop();
