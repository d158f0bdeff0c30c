// A minimal, fast fake OpenAI chat upstream for benchmarks (plain node:http, fixed bodies).
//
//   node bench/upstream.mjs [--port 0] [--latency-ms 0] [--chunk-delay-ms 0]
//
// POST .../chat/completions: a fixed ~1 KB chat.completion, or with "stream": true an SSE stream of
// a role chunk, 10 content chunks, a finish chunk, a usage chunk (only when
// stream_options.include_usage is true, as OpenAI does) and [DONE].
// --latency-ms delays the response headers; --chunk-delay-ms spaces the SSE events.
// Control (for the orchestrator, never sent by Tollgate): POST /__bench/config {latencyMs, chunkDelayMs},
// GET /__bench/stats -> {active, requests, streams}. Prints `listening <port>` on stdout when ready.
import { createServer } from 'node:http';

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : (process.env[`BENCH_UPSTREAM_${name.toUpperCase().replaceAll('-', '_')}`] ?? dflt);
};
let latencyMs = Number(arg('latency-ms', 0));
let chunkDelayMs = Number(arg('chunk-delay-ms', 0));
const port = Number(arg('port', 0));

const MODEL = 'gpt-4o-mini-2024-07-18';
const usage = { prompt_tokens: 212, completion_tokens: 96, total_tokens: 308,
  prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
  completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 } };
const PIECES = [
  'Sure! Here is a short summary of the quarterly report. ',
  'Revenue grew by 12% year over year, driven mainly by the subscription business, ',
  'while hardware sales were flat. Operating costs rose by 4%, ',
  'mostly from new hires in engineering and support. ',
  'Gross margin improved to 61%, up from 58% a year ago. ',
  'Cash on hand at the end of the quarter was 48 million dollars. ',
  'The outlook for the next quarter is cautious: ',
  'management expects revenue between 30 and 32 million dollars. ',
  'Key risks are currency swings and a slower enterprise sales cycle. ',
  'Let me know if you want a more detailed breakdown by region.',
];
const CONTENT = PIECES.join('');
const created = Math.floor(Date.now() / 1000);
let seq = 0;

function completionBody() {
  return JSON.stringify({
    id: `chatcmpl-bench${(++seq).toString(36).padStart(10, '0')}`,
    object: 'chat.completion',
    created,
    model: MODEL,
    choices: [{ index: 0, message: { role: 'assistant', content: CONTENT, refusal: null, annotations: [] }, logprobs: null, finish_reason: 'stop' }],
    usage,
    service_tier: 'default',
    system_fingerprint: 'fp_bench00001',
  });
}

function streamEvents(includeUsage) {
  const id = `chatcmpl-bench${(++seq).toString(36).padStart(10, '0')}`;
  const head = `{"id":"${id}","object":"chat.completion.chunk","created":${created},"model":"${MODEL}","service_tier":"default","system_fingerprint":"fp_bench00001",`;
  const withUsage = includeUsage ? ',"usage":null' : '';
  const ev = (choices, extra = withUsage) => `data: ${head}"choices":${choices}${extra}}\n\n`;
  const out = [ev(`[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]`)];
  for (const p of PIECES) out.push(ev(`[{"index":0,"delta":{"content":${JSON.stringify(p)}},"logprobs":null,"finish_reason":null}]`));
  out.push(ev(`[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]`));
  if (includeUsage) out.push(ev('[]', `,"usage":${JSON.stringify(usage)}`));
  out.push('data: [DONE]\n\n');
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let active = 0;
let requests = 0;
let streams = 0;

const server = createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => void handle(req, res, Buffer.concat(chunks)).catch(() => res.destroy()));
});

async function handle(req, res, raw) {
  const url = req.url ?? '/';
  if (url.startsWith('/__bench/')) {
    if (url === '/__bench/config' && req.method === 'POST') {
      const c = JSON.parse(raw.toString() || '{}');
      if (c.latencyMs !== undefined) latencyMs = Number(c.latencyMs);
      if (c.chunkDelayMs !== undefined) chunkDelayMs = Number(c.chunkDelayMs);
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ active, requests, streams, latencyMs, chunkDelayMs }));
    return;
  }
  requests++;
  if (req.method !== 'POST' || !url.endsWith('/chat/completions')) {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":{"message":"Invalid URL","type":"invalid_request_error","param":null,"code":null}}');
    return;
  }
  let body;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch {
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end('{"error":{"message":"We could not parse the JSON body of your request.","type":"invalid_request_error","param":null,"code":null}}');
    return;
  }
  if (latencyMs > 0) await sleep(latencyMs);
  const common = { 'x-request-id': `req_bench${seq}`, 'openai-processing-ms': '1', 'openai-version': '2020-10-01' };
  if (body.stream !== true) {
    const out = completionBody();
    res.writeHead(200, { ...common, 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
    res.end(out);
    return;
  }
  streams++;
  active++;
  let open = true;
  res.on('close', () => {
    if (open) active--;
    open = false;
  });
  res.writeHead(200, { ...common, 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  const events = streamEvents(body.stream_options?.include_usage === true);
  if (chunkDelayMs <= 0) {
    // No pacing: write the events in one go (still chunked, as separate writes coalesce on the socket).
    for (const e of events) res.write(e);
    res.end();
    return;
  }
  for (const e of events) {
    if (!open) return;
    res.write(e);
    await sleep(chunkDelayMs);
  }
  res.end();
}

server.keepAliveTimeout = 120_000;
server.headersTimeout = 0;
server.requestTimeout = 0;
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
