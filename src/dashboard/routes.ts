// The spend dashboard: a static page (no build step) that reads the admin API with the admin token the user types in.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { notFound } from '../errors.js';

// The page loads only its own files: no inline script or style, no third party, no framing.
export const DASHBOARD_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
].join('; ');

const SECURITY_HEADERS = {
  'content-security-policy': DASHBOARD_CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
} as const;

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

// Next to this file in src/ and, once the build copies them, in dist/.
const here = dirname(fileURLToPath(import.meta.url));

// chart.js's package exports do not include its UMD bundle, so it is found beside the package's main file.
function chartJsDir(): string {
  return dirname(createRequire(import.meta.url).resolve('chart.js'));
}

function load(path: string, type: string): Asset {
  let body: Buffer;
  try {
    body = readFileSync(path);
  } catch (err) {
    // Loud at start-up rather than a blank page later: the usual cause is a build that did not copy src/dashboard.
    throw new Error(`dashboard: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); the build must copy src/dashboard/*.{html,js,css} next to routes.js`);
  }
  return { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` };
}

export async function dashboardRoutes(app: FastifyInstance, _opts: Record<never, never> = {}) {
  // Read once at registration: a few hundred kB in memory, and a missing file fails the boot, not a request.
  const html = load(join(here, 'index.html'), 'text/html; charset=utf-8');
  const chartDir = chartJsDir();
  const assets = new Map<string, Asset>([
    ['app.js', load(join(here, 'app.js'), 'text/javascript; charset=utf-8')],
    ['style.css', load(join(here, 'style.css'), 'text/css; charset=utf-8')],
    ['chart.js', load(join(chartDir, 'chart.umd.min.js'), 'text/javascript; charset=utf-8')],
    // The bundle's sourceMappingURL names this file; only browser devtools ever ask for it.
    ['chart.umd.min.js.map', load(join(chartDir, 'chart.umd.min.js.map'), 'application/json; charset=utf-8')],
  ]);

  // Every response of this scope, errors included.
  app.addHook('onSend', async (_request, reply, payload) => {
    reply.headers(SECURITY_HEADERS);
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
    return payload;
  });

  // '/' under the prefix answers both /dashboard and /dashboard/ (Fastify's prefixTrailingSlash 'both').
  app.get('/', async (_request, reply) => {
    return reply.type(html.type).header('cache-control', 'no-store').send(html.body);
  });

  app.get<{ Params: { file: string } }>('/assets/:file', async (request, reply) => {
    const asset = assets.get(request.params.file);
    if (!asset) throw notFound(`No dashboard asset named '${request.params.file.slice(0, 100)}'.`);
    // Revalidated on every load (a deploy changes them at once), but a 304 avoids sending chart.js again.
    reply.header('cache-control', 'no-cache').header('etag', asset.etag);
    if (request.headers['if-none-match'] === asset.etag) return reply.code(304).send();
    return reply.type(asset.type).send(asset.body);
  });
}
