// What the token-count memo (src/openai/count-memo.ts) saves on a multi-turn chat, where every
// request re-sends the system prompt and every earlier turn. Same process, same conversation,
// alternating rounds: with the memo, and with every text made unique (a tag with the request's
// number appended to it), so nothing is found in it. Prints microseconds per request and the ratio.
//
//   npm run build && node bench/token-memo.mjs [--turns 20] [--conversations 50] [--rounds 5]
import { estimatePromptTokens, preloadEncodings } from '../dist/openai/tokens.js';

const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(`--${name}`) ? Number(args[args.indexOf(`--${name}`) + 1]) : dflt);
const turns = arg('turns', 20);
const conversations = arg('conversations', 50);
const rounds = arg('rounds', 5);

const system =
  'You are a concise financial analyst assistant. Answer in plain English, at most five sentences, no bullet points, ' +
  'no tables. If a figure is missing from the report, say so instead of guessing. Always mention revenue growth, ' +
  'margins, cash and the outlook when they are given.';
const question = (c, t) =>
  `Conversation ${c}, turn ${t}: here is the next part of the quarterly report. Revenue 29.4M USD (+12% YoY), ` +
  `subscription revenue 21.1M (+19%), hardware 8.3M (flat). Operating expenses 17.9M (+4%), headcount 412. ` +
  `Gross margin 61% (58% a year ago). Cash 48.2M. What changed since the previous part, and why does it matter?`;
const answer = (c, t) =>
  `For conversation ${c} at turn ${t}: revenue grew 12% year on year, led by subscriptions (+19%), while hardware ` +
  `was flat. Gross margin widened to 61% from 58%, and operating expenses grew only 4%, so operating leverage ` +
  `improved. Cash of 48.2M gives room for the guided 30-32M next quarter; FX and longer sales cycles are the risks.`;

/**
 * The request bodies of every conversation's turns, as clients send them (JSON text). Every message
 * ends with a tag: the round's, so each round starts with texts the memo has not seen, and the
 * request's too when `unique`, so no text is ever seen twice (the baseline).
 */
function requests(round, unique) {
  const out = [];
  for (let c = 0; c < conversations; c++) {
    const messages = [{ role: 'system', content: system }];
    for (let t = 0; t < turns; t++) {
      messages.push({ role: 'user', content: question(c, t) });
      out.push(JSON.stringify({ model: 'gpt-4o-mini', messages }));
      messages.push({ role: 'assistant', content: answer(c, t) });
    }
  }
  return out.map((body, i) => body.replaceAll('"}', ` [${round}${unique ? `.${i}` : ''}]"}`));
}

function run(bodies) {
  const parsed = bodies.map((b) => JSON.parse(b)); // as each request arrives: its own strings
  const start = performance.now();
  for (const body of parsed) estimatePromptTokens('chat.completions', body, body.model);
  return ((performance.now() - start) * 1000) / parsed.length;
}

preloadEncodings();
run(requests('warm-up', true).slice(0, 200)); // the JIT
const memo = [];
const none = [];
for (let r = 0; r < rounds; r++) {
  none.push(run(requests(r, true)));
  memo.push(run(requests(r, false)));
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const m = median(memo);
const n = median(none);
const last = requests(0, false).at(-1);
console.log(`${conversations} conversations x ${turns} turns (${conversations * turns} requests a round, ~${Math.round(last.length / 1024)} KB at the last turn), ${rounds} rounds, medians`);
console.log(`every text unique (no memo hit): ${n.toFixed(1)} us per request`);
console.log(`with the memo:                   ${m.toFixed(1)} us per request`);
console.log(`ratio: ${(m / n).toFixed(2)}x`);
