// The model catalogue the fake upstream serves, with the ids, dates and owners the real /v1/models shows.
import { modelNotFound } from './errors.js';

export interface ModelObject {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
}

const model = (id: string, created: number, owned_by = 'system'): ModelObject => ({
  id,
  object: 'model',
  created,
  owned_by,
});

export const MODELS: readonly ModelObject[] = [
  model('gpt-4o', 1715367049),
  model('gpt-4o-mini', 1721172741),
  model('gpt-4.1', 1744316542),
  model('gpt-4.1-mini', 1744318173),
  model('gpt-4.1-nano', 1744321707),
  model('o3-mini', 1737146383),
  model('gpt-3.5-turbo-instruct', 1692901427),
  model('text-davinci-002', 1649358449, 'openai'),
  model('text-embedding-3-small', 1705948997),
  model('text-embedding-3-large', 1705953180),
  model('text-embedding-ada-002', 1671217299, 'openai-internal'),
  model('omni-moderation-latest', 1731689265),
  model('omni-moderation-2024-09-26', 1732734466),
];

const BY_ID = new Map(MODELS.map((m) => [m.id, m]));

export function findModel(id: string): ModelObject | undefined {
  return BY_ID.get(id);
}

/**
 * Accepts a listed id, a dated snapshot of one (gpt-4o-2024-08-06), or a fine-tuned model of one
 * (ft:gpt-4o-mini-2024-07-18:org::id), as OpenAI does for an account that owns it; requests name
 * snapshots and fine-tunes all the time and the gateway must pass them through.
 */
export function requireKnownModel(id: string): void {
  const named = id.startsWith('ft:') ? (id.split(':')[1] ?? '') : id;
  const base = named.replace(/-\d{4}-\d{2}-\d{2}$/, '');
  if (!BY_ID.has(named) && !BY_ID.has(base)) throw modelNotFound(id);
}
