// Builds a real gateway (app factory, real HTTP listener) in front of a real fake-OpenAI, with its log captured.
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import OpenAI from 'openai';
import { buildApp, type BuildOptions } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { startFakeOpenAI, type FakeOpenAI } from '../../src/fake-openai/server.js';

export const ADMIN_TOKEN = 'test-admin-token-0123456789';
export const UPSTREAM_KEY = 'sk-upstream-server-secret-0123456789';

/** Collects every log line the app writes, so tests can read and grep it. */
export class LogCapture extends Writable {
  readonly lines: Record<string, unknown>[] = [];
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void) {
    const s = chunk.toString('utf8');
    this.text += s;
    for (const line of s.split('\n')) if (line.trim()) this.lines.push(JSON.parse(line) as Record<string, unknown>);
    done();
  }
  requests() {
    return this.lines.filter((l) => l.msg === 'request');
  }
}

export interface Gateway {
  app: FastifyInstance;
  url: string;
  logs: LogCapture;
  fake: FakeOpenAI;
  admin(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  createKey(body?: Record<string, unknown>): Promise<{ id: string; key: string }>;
  sdk(apiKey: string, options?: Partial<ConstructorParameters<typeof OpenAI>[0]>): OpenAI;
  close(): Promise<void>;
}

export interface GatewayOptions extends BuildOptions {
  env?: Record<string, string>;
  /** Share a fake upstream between gateways. */
  fake?: FakeOpenAI;
}

export async function startGateway(options: GatewayOptions = {}): Promise<Gateway> {
  const fake = options.fake ?? (await startFakeOpenAI({ apiKey: UPSTREAM_KEY }));
  const config = loadConfig({
    OPENAI_API_KEY: UPSTREAM_KEY,
    OPENAI_BASE_URL: fake.url,
    ADMIN_TOKEN,
    LOG_LEVEL: 'info',
    HOST: '127.0.0.1',
    PORT: '0',
    // Off unless a test is about the cache: elsewhere, repeated identical requests must reach upstream.
    CACHE_ENABLED: 'false',
    // Off unless a test is about retries: elsewhere, one failNext must reach the client as it is.
    UPSTREAM_MAX_RETRIES: '0',
    ...options.env,
  });
  const logs = new LogCapture();
  const app = await buildApp(config, { logStream: logs, ...options });
  const url = await app.listen({ port: 0, host: '127.0.0.1' });

  async function admin(method: string, path: string, body?: unknown) {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  }

  return {
    app,
    url,
    logs,
    fake,
    admin,
    async createKey(body = {}) {
      const res = await admin('POST', '/admin/keys', { name: 'test-app', ...body });
      if (res.status !== 201) throw new Error(`createKey failed: ${res.status} ${JSON.stringify(res.body)}`);
      return res.body as { id: string; key: string };
    },
    sdk: (apiKey, sdkOptions) => new OpenAI({ apiKey, baseURL: `${url}/v1`, maxRetries: 0, ...sdkOptions }),
    async close() {
      await app.close();
      if (!options.fake) await fake.close();
    },
  };
}
