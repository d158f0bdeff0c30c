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

/** After SHUTDOWN_TIMEOUT_MS cut the open connections, close() still has this long for its drains. */
const DRAIN_GRACE_MS = 5_000;

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
  /** The demo's own throwaway admin token, printable; an operator's ADMIN_TOKEN never is. */
  let demoAdminToken: string | undefined;
  if (config.demo) {
    if (config.adminToken === undefined) demoAdminToken = `demo-admin-${randomBytes(12).toString('hex')}`;
    // Demo: a built-in fake OpenAI on loopback, so the gateway runs without a real key.
    fake = await startFakeOpenAI({ apiKey: 'sk-demo-upstream' });
    config = {
      ...config,
      upstream: { ...config.upstream, baseUrl: fake.url, apiKey: 'sk-demo-upstream', apiKeys: ['sk-demo-upstream'] },
      adminToken: config.adminToken ?? demoAdminToken,
    };
  }

  // Load o200k_base now (~105 ms, 4 MB), the encoding of every current model, rather than in the
  // first request; cl100k_base (~30 ms) and p50k_base (~15 ms) load in the first request of a model
  // that uses them, so a gateway serving only current models never holds them.
  preloadEncodings();
  let app: Awaited<ReturnType<typeof buildApp>> | undefined;
  let address: string;
  try {
    app = await buildApp(config);
    address = await app.listen({ port: config.port, host: config.host });
  } catch (err) {
    // One line, no stack: a stack may carry a secret (a Redis URL's password, say).
    console.error(`Start-up failed: ${startupFailure(err, config)}`);
    await Promise.race([app?.close(), new Promise((resolve) => setTimeout(resolve, 1000).unref())]).catch(() => undefined);
    process.exit(1);
  }
  // After start-up's long-lived allocations: sizes the V8 heap for many open streams (src/heap.ts).
  const heap = configureHeap(config.heap);
  const memoryTrim = startMemoryTrimmer(config.memoryTrimIntervalMs).status;
  app.log.info({ heap, memoryTrim }, 'memory configured');

  if (config.demo) await printDemoBanner(config, address, demoAdminToken);

  let closing = false;
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    app.log.info({ signal, deadlineMs: config.shutdownTimeoutMs }, 'shutting down: finishing in-flight requests');
    // At the deadline the connections still open are cut: each stream then takes the client-abort
    // path, which settles it as estimated, and close() goes on to its drains (quota settlements,
    // usage events), so nothing accepted goes unrecorded. The drains get DRAIN_GRACE_MS more; past
    // that the process exits non-zero anyway.
    let forced = false;
    /** Connections with a request in progress that the deadline cut (idle ones are closed first, not counted). */
    let cut = 0;
    const deadline = setTimeout(() => {
      forced = true;
      // Idle keep-alive connections are closed, not cut; destroying a socket unregisters it from the server at
      // once, so what is counted next are the connections with a request still in progress.
      app.server.closeIdleConnections();
      app.server.getConnections((err, open) => {
        cut = err ? 0 : open;
        if (cut > 0) {
          app.log.error({ connections: cut }, 'shutdown deadline passed; closing the connections still open and recording their usage');
        } else {
          app.log.error('shutdown deadline passed with no connection open; still waiting for the drains');
        }
        app.cutOpenConnections();
      });
      const last = setTimeout(() => {
        app.log.error({ graceMs: DRAIN_GRACE_MS }, 'shutdown drains did not finish in time; exiting');
        process.exit(1);
      }, DRAIN_GRACE_MS);
      last.unref();
    }, config.shutdownTimeoutMs);
    deadline.unref();
    // A keep-alive connection whose stream finishes after close() began would hold the server open
    // until its keep-alive timeout: close connections as soon as they fall idle.
    const sweeper = setInterval(() => app.server.closeIdleConnections(), 100);
    sweeper.unref();
    try {
      await app.close();
    } catch (err) {
      app.log.error({ err: (err as Error).message }, 'shutdown failed');
      process.exit(1);
    }
    clearTimeout(deadline);
    clearInterval(sweeper);
    await fake?.close();
    if (forced) {
      if (cut > 0) {
        app.log.error({ connections: cut }, 'shut down after the deadline: connections still open were cut (their usage recorded as estimated)');
      } else {
        app.log.error('shut down after the deadline: no connection was cut, but the drains took longer than SHUTDOWN_TIMEOUT_MS');
      }
      process.exit(1);
    }
    app.log.info('shut down cleanly');
    process.exit(0);
  };
  handleStopSignals((signal) => void shutdown(signal));
}

/** Why start-up failed, in one line, with every secret of the config masked. */
function startupFailure(err: unknown, config: Config): string {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  let message: string;
  if (e?.code === 'EADDRINUSE') message = `port ${config.port} on ${config.host} is already in use (PORT, HOST)`;
  else if (e?.code === 'EADDRNOTAVAIL' || e?.code === 'ENOTFOUND' || e?.code === 'EAI_AGAIN') {
    message = `cannot listen on HOST=${config.host} (${e.code}): not an address of this machine`;
  } else if (e?.code === 'EACCES') message = `no permission to listen on port ${config.port} (PORT)`;
  else message = (err instanceof Error ? err.message : String(err)).trim().replace(/\s*\n\s*/g, '; ') || 'unknown error';
  return redactSecrets(message, config);
}

function redactSecrets(text: string, config: Config): string {
  const secrets = [
    ...config.upstream.apiKeys,
    config.adminToken,
    config.metricsToken,
    config.redis?.password,
    config.redis?.url,
    ...redisUrlSecrets(config.redis?.url),
  ].filter((s): s is string => typeof s === 'string' && s.length >= 3);
  // Longest first: a URL is masked whole before the password inside it.
  for (const secret of secrets.sort((a, b) => b.length - a.length)) text = text.split(secret).join('***');
  return text;
}

function redisUrlSecrets(url: string | undefined): string[] {
  if (!url) return [];
  try {
    const u = new URL(url);
    return [u.password, decodeURIComponent(u.password)];
  } catch {
    return [];
  }
}

/**
 * Creates a demo key through the admin API (the real code path) and prints how to use it. The admin
 * token is printed only when the demo made it (`demoAdminToken`); an operator's ADMIN_TOKEN is a
 * real secret, shown as $ADMIN_TOKEN. With a Redis store no key is made: it would outlive the demo
 * and authenticate on every instance sharing that Redis, against the real OpenAI there.
 */
async function printDemoBanner(config: Config, address: string, demoAdminToken: string | undefined) {
  const base = address.replace('0.0.0.0', '127.0.0.1').replace('[::]', '127.0.0.1');
  const adminToken = demoAdminToken ?? '$ADMIN_TOKEN';
  const createKey = `  curl -X POST ${base}/admin/keys -H "Authorization: Bearer ${adminToken}" -H "Content-Type: application/json" -d '{"name":"demo"}'`;
  if (config.redis) {
    process.stdout.write(
      `\nTollgate demo is running (fake OpenAI upstream, Redis store). It makes no demo key in Redis, where one would` +
        `\noutlive the demo and work on any instance sharing that Redis (against real OpenAI there). Create one, and revoke it` +
        ` when done (DELETE /admin/keys/{id}):\n${createKey}\n\n`,
    );
    return;
  }
  // Over HTTP, as any client: an injected request has no socket, and its log line said the client left.
  const res = await fetch(`${base}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${config.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'demo' }),
  });
  const answer = (await res.json().catch(() => ({}))) as { key?: string; error?: { message?: string } };
  if (res.status !== 201 || answer.key === undefined) {
    // Say so rather than print `undefined` as a key.
    const error = answer.error?.message ?? `HTTP ${res.status}`;
    process.stdout.write(`\nTollgate demo is running (fake OpenAI upstream, in-memory store), but no demo key could be created: ${error}\n${createKey}\n\n`);
    return;
  }
  const { key } = answer;
  // Written to stdout on purpose, outside the JSON log: a throwaway key of an in-memory store, and
  // the demo's own admin token.
  process.stdout.write(
    [
      '',
      'Tollgate demo is running (fake OpenAI upstream, in-memory store).',
      `  gateway key:  ${key}`,
      `  admin token:  ${demoAdminToken ?? 'yours (ADMIN_TOKEN)'}`,
      '',
      'Try it:',
      `  curl ${base}/v1/chat/completions -H "Authorization: Bearer ${key}" -H "Content-Type: application/json" \\`,
      `    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'`,
      `  curl ${base}/admin/keys -H "Authorization: Bearer ${adminToken}"`,
      '',
    ].join('\n') + '\n',
  );
}

void main();
