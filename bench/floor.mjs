// The Node floor: the same stack as Tollgate (Fastify 5, an undici Pool) forwarding chat requests to
// the upstream with no feature at all: no auth, quotas, cache, usage, metrics or logging. It tells
// how much of Tollgate's cost is the stack itself, what any Node gateway on it pays per request.
//
//   node bench/floor.mjs --port 0 --upstream http://127.0.0.1:<port>
//
// The body is parsed (a gateway must read it) and its bytes forwarded unchanged; a non-streamed
// answer is read whole and sent, a stream is piped through. Prints `listening <port>` when ready.
//
//   node bench/floor.mjs --port 0 --upstream http://127.0.0.1:<port> --from-memory
//
// The floor of a cache hit: asks the upstream once (a non-streamed answer and a stream) at start,
// then answers every request from memory with those bytes, the body still read and parsed.
import Fastify from 'fastify';
import { Pool } from 'undici';

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const upstream = new URL(arg('upstream'));
const pool = new Pool(upstream.origin, { connections: 256 });
const app = Fastify({ logger: false });
app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
  request.rawBody = body;
  try {
    done(null, JSON.parse(body.toString('utf8')));
  } catch (err) {
    err.statusCode = 400;
    done(err);
  }
});

async function ask(body) {
  return pool.request({
    method: 'POST',
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', authorization: 'Bearer sk-floor' },
    body,
  });
}

if (args.includes('--from-memory')) {
  const remembered = {};
  for (const stream of [false, true]) {
    const body = JSON.stringify({ model: 'gpt-4o-mini', stream, stream_options: stream ? { include_usage: true } : undefined, messages: [{ role: 'user', content: 'floor' }] });
    const res = await ask(body);
    remembered[stream] = { type: res.headers['content-type'], bytes: Buffer.from(await res.body.arrayBuffer()) };
  }
  app.post('/v1/chat/completions', async (request, reply) => {
    const answer = remembered[request.body?.stream === true];
    return reply.header('content-type', answer.type).send(answer.bytes);
  });
} else {
  app.post('/v1/chat/completions', async (request, reply) => {
    const res = await ask(request.rawBody);
    reply.code(res.statusCode).header('content-type', res.headers['content-type']);
    if (request.body?.stream === true) return reply.send(res.body);
    const chunks = [];
    for await (const chunk of res.body) chunks.push(chunk);
    return reply.send(Buffer.concat(chunks));
  });
}
app.get('/__bench/stats', async () => ({ ok: true }));

const address = await app.listen({ port: Number(arg('port', 0)), host: '127.0.0.1' });
console.log(`listening ${new URL(address).port}`);
