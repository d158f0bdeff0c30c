// `tollgate keys ...`: create, list, show, update, revoke and rotate gateway keys through the admin API.
import { UsageError, type Command, type CommandContext, type OptionSpecs } from '../command.js';
import { ApiError, MAX_KEYS_PAGE, type AdminClient, type AdminKey, type KeyInput } from '../admin-client.js';
import { LIMIT_FIELDS, keyDetails, keysTable } from '../format.js';
import { clean } from '../table.js';

type Metadata = Record<string, string | number | boolean | null>;

const MODELS_HELP = "Comma-separated model names; an entry ending in * matches by\nprefix (gpt-4o*). 'all' allows every model";

function limitOptions(forUpdate: boolean): OptionSpecs {
  const options: OptionSpecs = {};
  for (const l of LIMIT_FIELDS) {
    options[l.flag] = {
      type: 'string',
      value: l.kind === 'usd' ? 'X' : 'N',
      description: forUpdate ? `${l.help}; 'none' removes this limit` : l.help,
    };
  }
  return options;
}

const createOptions: OptionSpecs = {
  name: { type: 'string', value: 'NAME', description: 'Name of the app or team the key is for (required)' },
  models: { type: 'string', value: 'LIST', description: `${MODELS_HELP} (the default)` },
  ...limitOptions(false),
  metadata: { type: 'string', multiple: true, value: 'KEY=VALUE', description: 'A label to keep with the key' },
};

const updateOptions: OptionSpecs = {
  name: { type: 'string', value: 'NAME', description: 'New name' },
  models: { type: 'string', value: 'LIST', description: `${MODELS_HELP}. Replaces the list` },
  ...limitOptions(true),
  'clear-limits': { type: 'boolean', description: 'Remove every limit (limit flags given too are then applied)' },
  metadata: { type: 'string', multiple: true, value: 'KEY=VALUE', description: 'Set a label, keeping the others' },
  'clear-metadata': { type: 'boolean', description: 'Remove every label (--metadata given too is then applied)' },
};

// Digits, `_` allowed only between digits (1_000): the value is then read with every `_` removed.
const COUNT = /^\d+(_\d+)*$/;
const DECIMAL = /^(\d+(_\d+)*(\.\d+)?|\.\d+)$/;

/** The limit flags given: field -> value, or null for `none` (update only: remove that limit). */
function limitFlags(ctx: CommandContext, allowNone: boolean): Map<string, number | null> {
  const changes = new Map<string, number | null>();
  for (const l of LIMIT_FIELDS) {
    const raw = ctx.string(l.flag)?.trim();
    if (raw === undefined) continue;
    if (allowNone && raw.toLowerCase() === 'none') {
      changes.set(l.field, null);
      continue;
    }
    const value = Number(raw.replaceAll('_', ''));
    const ok = l.kind === 'usd' ? DECIMAL.test(raw) && value > 0 : COUNT.test(raw) && value > 0 && Number.isSafeInteger(value);
    if (!ok) {
      const what = l.kind === 'usd' ? 'a positive amount of US dollars, e.g. 5 or 0.50' : 'a positive whole number';
      throw new UsageError(`--${l.flag} must be ${what}${allowNone ? ", or 'none'" : ''} (got '${raw}')`, ctx.path);
    }
    changes.set(l.field, value);
  }
  return changes;
}

function parseModels(ctx: CommandContext, raw: string): string[] | null {
  if (raw.trim().toLowerCase() === 'all') return null;
  const models = raw
    .split(',')
    .map((m) => m.trim())
    .filter(Boolean);
  if (models.length === 0) throw new UsageError("--models needs a comma-separated list of models, or 'all'", ctx.path);
  return models;
}

function parseMetadata(ctx: CommandContext): Metadata {
  const metadata: Metadata = {};
  for (const entry of ctx.strings('metadata')) {
    const at = entry.indexOf('=');
    const key = at === -1 ? '' : entry.slice(0, at).trim();
    if (!key) throw new UsageError(`--metadata takes KEY=VALUE (got '${entry}')`, ctx.path);
    metadata[key] = entry.slice(at + 1);
  }
  return metadata;
}

function applyLimits(base: Record<string, number>, changes: Map<string, number | null>): Record<string, number> {
  const limits = { ...base };
  for (const [field, value] of changes) {
    if (value === null) delete limits[field];
    else limits[field] = value;
  }
  return limits;
}

interface MergeChanges {
  limitChanges: Map<string, number | null>;
  clearLimits: boolean;
  metadataChanges: Metadata;
  clearMetadata: boolean;
}

/**
 * Limits and metadata merged into the key's own. By the gateway when it takes a merge patch (it
 * applies the changes to the key as it stands when it writes: concurrent updates all hold); else
 * here, from the key as read, sent whole.
 */
async function mergeUpdate(client: AdminClient, id: string, patch: KeyInput, c: MergeChanges): Promise<AdminKey> {
  const changesLimits = c.limitChanges.size > 0 || c.clearLimits;
  const changesMetadata = c.clearMetadata || Object.keys(c.metadataChanges).length > 0;
  const { key: current, takesMergePatch } = await client.getKeyForUpdate(id);
  if (takesMergePatch) {
    // `merge: true`: behind a load balancer in a rolling upgrade the PATCH may reach an older
    // instance than the GET did, which would read the patch as whole fields and drop the key's
    // other limits; it refuses an unknown field instead (400), and the whole fields follow.
    const merge: Record<string, unknown> = { ...patch, merge: true };
    if (changesLimits) merge.limits = limitsMerge(c.limitChanges, c.clearLimits);
    if (changesMetadata) merge.metadata = metadataMerge(c.metadataChanges, c.clearMetadata, current.metadata ?? {});
    try {
      return await client.mergeKey(id, merge);
    } catch (err) {
      // Refused: an older instance (above), or a value it would refuse anyway, which the whole
      // fields below are refused for too, with the same message.
      if (!(err instanceof ApiError) || err.status !== 400) throw err;
    }
  }
  const whole: KeyInput = { ...patch };
  if (changesLimits) whole.limits = applyLimits(c.clearLimits ? {} : { ...(current.limits ?? {}) }, c.limitChanges);
  if (changesMetadata) whole.metadata = { ...(c.clearMetadata ? {} : (current.metadata ?? {})), ...c.metadataChanges };
  return client.updateKey(id, whole);
}

/** The limits member of a merge patch: each limit flag given (null removes it), every other limit null when clearing. */
function limitsMerge(changes: Map<string, number | null>, clear: boolean): Record<string, number | null> {
  const merge: Record<string, number | null> = {};
  if (clear) for (const l of LIMIT_FIELDS) merge[l.field] = null;
  for (const [field, value] of changes) merge[field] = value;
  return merge;
}

/**
 * The metadata member of a merge patch: the entries given, and when clearing, null for every entry
 * the key had (read just before: an entry added in between survives the clearing).
 */
function metadataMerge(changes: Metadata, clear: boolean, current: Record<string, unknown>): Record<string, unknown> {
  const merge: Record<string, unknown> = {};
  if (clear) for (const name of Object.keys(current)) merge[name] = null;
  return Object.assign(merge, changes);
}

function printSecret(ctx: CommandContext, key: AdminKey) {
  if (typeof key.key !== 'string') return;
  ctx.out(
    [
      '',
      'Secret key (copy it now: it will not be shown again):',
      '',
      `    ${clean(key.key)}`,
      '',
      `Tollgate keeps only its hash. If it is lost, rotate the key: tollgate keys rotate ${clean(String(key.id))}`,
    ].join('\n'),
  );
}

const create: Command = {
  name: 'create',
  summary: 'Create a key and print its secret (shown once)',
  usage: '--name NAME [options]',
  description: `Creates a gateway key. Its secret is printed once, in this output only, and cannot be
retrieved later (Tollgate stores its sha256). Limits not given are not enforced.

Example:
  tollgate keys create --name billing-app --models 'gpt-4o-mini,text-embedding-3-*' \\
    --rpm 600 --usd-per-day 20 --metadata team=billing`,
  options: createOptions,
  async run(ctx) {
    const name = ctx.string('name');
    if (name === undefined || !name.trim()) throw new UsageError('--name is required', ctx.path);
    const input: KeyInput = { name };
    const models = ctx.string('models');
    if (models !== undefined) input.models = parseModels(ctx, models);
    const limits = limitFlags(ctx, false);
    if (limits.size) input.limits = applyLimits({}, limits);
    if (ctx.strings('metadata').length) input.metadata = parseMetadata(ctx);

    const created = await ctx.client().createKey(input);
    if (ctx.json) return ctx.printJson(created);
    ctx.out(`Created key ${clean(String(created.id))}.\n`);
    ctx.out(keyDetails(created));
    printSecret(ctx, created);
  },
};

const listOptions: OptionSpecs = {
  'page-size': {
    type: 'string',
    value: 'N',
    description: `Keys asked for per request, 1 to ${MAX_KEYS_PAGE} (the default: ${MAX_KEYS_PAGE}). Every key is listed either way`,
  },
};

/** --page-size: how many keys each GET /admin/keys asks for. */
function pageSize(ctx: CommandContext): number {
  const raw = ctx.string('page-size')?.trim();
  if (raw === undefined) return MAX_KEYS_PAGE;
  const value = Number(raw.replaceAll('_', ''));
  if (!COUNT.test(raw) || value < 1 || value > MAX_KEYS_PAGE) {
    throw new UsageError(`--page-size must be a whole number from 1 to ${MAX_KEYS_PAGE} (got '${raw}')`, ctx.path);
  }
  return value;
}

const list: Command = {
  name: 'list',
  summary: 'List every key, revoked ones included',
  usage: '[options]',
  description: `Lists every key, oldest first, without secrets. This asks the API for --page-size keys at a
time and follows the pages to the last. --json prints them all as one list: {"object":"list","data":[...]}.`,
  options: listOptions,
  async run(ctx) {
    const res = await ctx.client().listKeys(pageSize(ctx));
    if (ctx.json) return ctx.printJson(res);
    const keys = Array.isArray(res?.data) ? [...res.data] : [];
    if (keys.length === 0) return ctx.out('No keys.');
    keys.sort((a, b) => String(a.createdAt ?? '').localeCompare(String(b.createdAt ?? '')));
    ctx.out(keysTable(keys));
  },
};

const show: Command = {
  name: 'show',
  summary: 'Show one key, and its quota usage when the gateway reports it',
  usage: 'ID [options]',
  args: ['ID'],
  description:
    'Shows one key (never its secret). When the gateway reports usage, a quota table follows: each\nlimit, what is used, what requests in flight have reserved, and when the window resets.',
  async run(ctx) {
    const key = await ctx.client().getKey(ctx.positionals[0]!);
    if (ctx.json) return ctx.printJson(key);
    ctx.out(keyDetails(key));
  },
};

const update: Command = {
  name: 'update',
  summary: "Change a key's name, models, limits or metadata",
  usage: 'ID [options]',
  args: ['ID'],
  description: `Changes only what is given.

Limits are merged: --rpm 10 sets rpm and keeps every other limit. A limit flag set to 'none'
removes that limit; --clear-limits removes them all. --metadata entries are merged into the
current metadata the same way. --models replaces the list; --models all allows every model.
The gateway merges them itself (a JSON merge patch), so two updates of one key run at once both
hold; against a gateway that does not take merge patches, this reads the key and sends the
merged result, and then one of two such updates run at once can be lost.

Examples:
  tollgate keys update key_abc --rpm 10 --usd-per-day none
  tollgate keys update key_abc --models 'gpt-4o*' --clear-limits`,
  options: updateOptions,
  async run(ctx) {
    const id = ctx.positionals[0]!;
    const patch: KeyInput = {};
    const name = ctx.string('name');
    if (name !== undefined) {
      if (!name.trim()) throw new UsageError('--name cannot be empty', ctx.path);
      patch.name = name;
    }
    const models = ctx.string('models');
    if (models !== undefined) patch.models = parseModels(ctx, models);
    const limitChanges = limitFlags(ctx, true);
    const clearLimits = ctx.flag('clear-limits');
    const metadataChanges = parseMetadata(ctx);
    const clearMetadata = ctx.flag('clear-metadata');
    const changesMetadata = clearMetadata || Object.keys(metadataChanges).length > 0;
    if (Object.keys(patch).length === 0 && limitChanges.size === 0 && !clearLimits && !changesMetadata) {
      throw new UsageError('nothing to update: give --name, --models, a limit flag, --clear-limits, --metadata or --clear-metadata', ctx.path);
    }

    const client = ctx.client();
    // Name and models are replaced whole: only limits and metadata need merging.
    const updated =
      limitChanges.size > 0 || clearLimits || changesMetadata
        ? await mergeUpdate(client, id, patch, { limitChanges, clearLimits, metadataChanges, clearMetadata })
        : await client.updateKey(id, patch);
    if (ctx.json) return ctx.printJson(updated);
    ctx.out(`Updated key ${clean(String(updated.id ?? id))}.\n`);
    ctx.out(keyDetails(updated));
  },
};

const revoke: Command = {
  name: 'revoke',
  summary: 'Revoke a key: it is refused from then on',
  usage: 'ID [options]',
  args: ['ID'],
  description: 'Revokes a key. It stays listed, for the record, and every request made with it is refused.',
  async run(ctx) {
    const id = ctx.positionals[0]!;
    const res = await ctx.client().revokeKey(id);
    if (ctx.json) return ctx.printJson(res);
    ctx.out(`Revoked key ${clean(String(res?.id ?? id))}: requests with it are refused from now on.`);
  },
};

const rotate: Command = {
  name: 'rotate',
  summary: 'Give a key a new secret; the old one stops working',
  usage: 'ID [options]',
  args: ['ID'],
  description:
    'Gives a key a new secret, printed once. The id, limits and usage stay; the old secret is\nrefused from now on. A revoked key cannot be rotated.',
  async run(ctx) {
    const rotated = await ctx.client().rotateKey(ctx.positionals[0]!);
    if (ctx.json) return ctx.printJson(rotated);
    ctx.out(`Rotated key ${clean(String(rotated.id))}${rotated.name ? ` (${clean(String(rotated.name))})` : ''}: the old secret no longer works.`);
    printSecret(ctx, rotated);
  },
};

export const keysCommand: Command = {
  name: 'keys',
  summary: 'Create, list, show, update, revoke and rotate gateway keys',
  subcommands: [create, list, show, update, revoke, rotate],
};
