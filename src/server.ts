// Process entry: loadConfig(process.env) -> buildApp -> listen; demo mode; graceful shutdown.
// stop-signals.js first: a stop while the modules load must not be lost (PID 1 in a container).
import { handleStopSignals } from './stop-signals.js';
// heap.js next: it holds V8's young generation small while the other modules load.
import { configureHeap } from './heap.js';
import { randomBytes } from 'node:crypto';
import { buildApp } from './app.js';
import { ConfigError, loadConfig, type Config } from './config.js';
import { startFakeOpenAI, type FakeOpenAI } from './fake-openai/server.js';
import { preloadEncodings } from './openai/tokens.js';
import { startMemoryTrimmer } from './native-memory.js';

async function main() {
  let config: Config;
  try {
    config = loadConfig(process.env, process.argv.slice(2));
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(1);
    }
    throw err;
  }

  let fake: FakeOpenAI | undefined;
  if (config.demo) {
    // Demo: a built-in fake OpenAI on loopback, so the gateway runs without a real key.
    fake = await startFakeOpenAI({ apiKey: 'sk-demo-upstream' });
    config = {
      ...config,
      upstream: { ...config.upstream, baseUrl: fake.url, apiKey: 'sk-demo-upstream', apiKeys: ['sk-demo-upstream'] },
      adminToken: config.adminToken ?? `demo-admin-${randomBytes(12).toString('hex')}`,
    };
  }

  // Load o200k_base now (~105 ms, 4 MB), the encoding of every current model, rather than in the
  // first request; cl100k_base (~30 ms) and p50k_base (~15 ms) load in the first request of a model
  // that uses them, so a gateway serving only current models never holds them.
  preloadEncodings();
  const app = await buildApp(config);
  const address = await app.listen({ port: config.port, host: config.host });
  // After start-up's long-lived allocations: sizes the V8 heap for many open streams (src/heap.ts).
  const heap = configureHeap(config.heap);
  const memoryTrim = startMemoryTrimmer(config.memoryTrimIntervalMs).status;
  app.log.info({ heap, memoryTrim }, 'memory configured');

  if (config.demo) await printDemoBanner(app, config, address);

  let closing = false;
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    app.log.info({ signal, deadlineMs: config.shutdownTimeoutMs }, 'shutting down: finishing in-flight requests');
    const deadline = setTimeout(() => {
      app.log.error('shutdown deadline passed; exiting with requests still open');
      process.exit(1);
    }, config.shutdownTimeoutMs);
    deadline.unref();
    // A keep-alive connection whose stream finishes after close() began would hold the server open
    // until its keep-alive timeout: close connections as soon as they fall idle.
    const sweeper = setInterval(() => app.server.closeIdleConnections(), 100);
    sweeper.unref();
    await app.close();
    clearInterval(sweeper);
    await fake?.close();
    app.log.info('shut down cleanly');
    process.exit(0);
  };
  handleStopSignals((signal) => void shutdown(signal));
}

/** Creates a demo key through the admin API (the real code path) and prints how to use it. */
async function printDemoBanner(app: Awaited<ReturnType<typeof buildApp>>, config: Config, address: string) {
  const res = await app.inject({
    method: 'POST',
    url: '/admin/keys',
    headers: { authorization: `Bearer ${config.adminToken}` },
    payload: { name: 'demo' },
  });
  const { key } = res.json() as { key: string };
  const base = address.replace('0.0.0.0', '127.0.0.1').replace('[::]', '127.0.0.1');
  // Written to stdout on purpose, outside the JSON log: these are throwaway demo secrets.
  process.stdout.write(
    [
      '',
      `Tollgate demo is running (fake OpenAI upstream, ${config.redis ? 'Redis' : 'in-memory'} store).`,
      `  gateway key:  ${key}`,
      `  admin token:  ${config.adminToken}`,
      '',
      'Try it:',
      `  curl ${base}/v1/chat/completions -H "Authorization: Bearer ${key}" -H "Content-Type: application/json" \\`,
      `    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'`,
      `  curl ${base}/admin/keys -H "Authorization: Bearer ${config.adminToken}"`,
      '',
    ].join('\n') + '\n',
  );
}

void main();
