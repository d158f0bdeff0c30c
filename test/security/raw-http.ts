// Raw HTTP/1.1 over a socket, for requests fetch refuses to send (CR/LF in headers, repeated
// authorization, `..` in paths, bad methods), and the OpenAI error-shape check the security tests share.
import { connect } from 'node:net';
import { expect } from 'vitest';

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/**
 * Sends `head` (request line and headers, without the blank line) and `body`; reads until the server
 * closes. `halfClose` sends FIN after the body (for bodies shorter than their Content-Length); without
 * it the socket stays open, since Node aborts a request whose client half-closed.
 */
export function rawRequest(baseUrl: string, head: string, body: Buffer | string = '', halfClose = false): Promise<RawResponse> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => socket.destroy(new Error('raw request timed out')), 10_000);
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.on('error', (err) => {
      // The server may reset after answering (it destroys the socket on parse errors): keep what came.
      if (chunks.length === 0) {
        clearTimeout(timer);
        reject(err);
      }
    });
    socket.on('close', () => {
      clearTimeout(timer);
      try {
        resolve(parse(Buffer.concat(chunks)));
      } catch (err) {
        reject(err);
      }
    });
    socket[halfClose ? 'end' : 'write'](Buffer.concat([Buffer.from(`${head}\r\nConnection: close\r\n\r\n`, 'latin1'), Buffer.from(body)]));
  });
}

function parse(bytes: Buffer): RawResponse {
  const text = bytes.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) throw new Error(`no HTTP response: ${JSON.stringify(text.slice(0, 200))}`);
  const [statusLine, ...lines] = text.slice(0, end).split('\r\n');
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine!)?.[1]);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  let body = bytes.subarray(Buffer.byteLength(text.slice(0, end + 4), 'latin1'));
  if (headers['transfer-encoding'] === 'chunked') body = dechunk(body);
  return { status, headers, body: body.toString('utf8') };
}

function dechunk(bytes: Buffer): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = bytes.indexOf('\r\n', at);
    if (eol < 0) break;
    const size = parseInt(bytes.subarray(at, eol).toString('latin1'), 16);
    if (!size) break;
    out.push(bytes.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
  return Buffer.concat(out);
}

/** `{error:{message,type,param,code}}`, exactly OpenAI's error body. */
export function expectOpenAIError(body: string, context = '') {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    throw new Error(`error body is not JSON ${context}: ${JSON.stringify(body.slice(0, 300))}`);
  }
  expect(json, context).toMatchObject({ error: { message: expect.any(String), type: expect.any(String) } });
  const error = (json as { error: Record<string, unknown> }).error;
  expect('param' in error && 'code' in error, `param and code present ${context}`).toBe(true);
  expect(error.param === null || typeof error.param === 'string', context).toBe(true);
  expect(error.code === null || typeof error.code === 'string', context).toBe(true);
}

/** A status the gateway may give a hostile request: anything but a 5xx of its own. */
export function expectNotServerError(status: number, context = '') {
  expect(status, context).toBeGreaterThanOrEqual(200);
  expect(status, context).toBeLessThan(500);
}
