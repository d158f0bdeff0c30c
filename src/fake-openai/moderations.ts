// POST /v1/moderations: deterministic results (text mentioning "kill" is flagged as violence). Like
// the real API, the answer carries no usage: moderations are free.
import { badRequest, missingParam } from './errors.js';
import { requireKnownModel } from './models.js';
import { makeId, requireObject, type HandlerResult } from './common.js';

const CATEGORIES = [
  'harassment', 'harassment/threatening', 'hate', 'hate/threatening', 'illicit', 'illicit/violent', 'self-harm',
  'self-harm/intent', 'self-harm/instructions', 'sexual', 'sexual/minors', 'violence', 'violence/graphic',
] as const;

function texts(input: unknown): string[] {
  if (typeof input === 'string') return [input];
  if (Array.isArray(input) && input.length > 0) {
    if (input.every((i) => typeof i === 'string')) return input as string[];
    // Multimodal: one result for all the parts together.
    return [input.map((p: unknown) => (typeof (p as { text?: unknown })?.text === 'string' ? (p as { text: string }).text : '')).join(' ')];
  }
  throw badRequest("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.");
}

export function moderations(rawBody: unknown): HandlerResult {
  const body = requireObject(rawBody);
  if (body.input === undefined || body.input === null) throw missingParam('input');
  const requested = typeof body.model === 'string' ? body.model : 'omni-moderation-latest';
  requireKnownModel(requested);
  const results = texts(body.input).map((text) => {
    const violent = /\bkill/i.test(text);
    const categories = Object.fromEntries(CATEGORIES.map((c) => [c, c === 'violence' && violent]));
    const scores = Object.fromEntries(CATEGORIES.map((c) => [c, c === 'violence' && violent ? 0.91 : 0.0001]));
    const applied = Object.fromEntries(CATEGORIES.map((c) => [c, ['text']]));
    return { flagged: violent, categories, category_scores: scores, category_applied_input_types: applied };
  });
  const model = requested === 'omni-moderation-latest' ? 'omni-moderation-2024-09-26' : requested;
  return { type: 'json', status: 200, body: { id: makeId('modr'), model, results } };
}
