#!/usr/bin/env node
// The `tollgate` command line: manages a gateway through its admin API (see README, "The admin API").
// main() is the whole program and is what tests call; the process entry at the bottom runs only when this
// file is executed directly. Commands live in commands/ and are listed in commands/index.ts.
import { realpathSync } from 'node:fs';
import { basename, dirname, join, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { AdminClient, ApiError, ConnectionError } from './admin-client.js';
import {
  EXIT_ERROR,
  EXIT_OK,
  EXIT_USAGE,
  UsageError,
  type CliIO,
  type Command,
  type CommandContext,
  type OptionSpecs,
} from './command.js';
import { commands } from './commands/index.js';
import { DEFAULT_URL, GLOBAL_OPTIONS, renderHelp } from './help.js';
import { clean } from './table.js';

export type { CliIO } from './command.js';

const ROOT: Command = {
  name: 'tollgate',
  summary: 'manage a Tollgate gateway through its admin API',
  subcommands: commands,
};

const GLOBAL_VALUE_FLAGS = new Set(['--url', '--token']);
const GLOBAL_BOOLEAN_FLAGS = new Set(['--json', '--help', '-h']);
const HELP_FLAGS = new Set(['--help', '-h']);

const names = (path: Command[]) => path.map((c) => c.name);

interface Resolved {
  /** The command words found, from the root. */
  path: Command[];
  /** Everything else: options and arguments, for the parser. */
  rest: string[];
  /** `help` was one of the words (`tollgate help keys`, `tollgate keys help`). */
  helpWord: boolean;
}

/** Walks the command words. Global options may come before, between or after them. */
function resolve(argv: string[]): Resolved {
  const path = [ROOT];
  const rest: string[] = [];
  let helpWord = false;
  let i = 0;
  for (; i < argv.length; i++) {
    const node = path[path.length - 1]!;
    if (!node.subcommands) break;
    const token = argv[i]!;
    if (token === '--') break;
    if (token.startsWith('-') && token !== '-') {
      if (GLOBAL_VALUE_FLAGS.has(token)) {
        rest.push(token);
        if (i + 1 < argv.length) rest.push(argv[++i]!);
        continue;
      }
      if (GLOBAL_BOOLEAN_FLAGS.has(token) || token.startsWith('--url=') || token.startsWith('--token=')) {
        rest.push(token);
        continue;
      }
      break; // an option before its command is named: the parser reports it
    }
    if (token === 'help' && !helpWord) {
      helpWord = true;
      continue;
    }
    const sub = node.subcommands.find((c) => c.name === token);
    if (!sub) throw new UsageError(`unknown command '${token}'`, names(path));
    path.push(sub);
  }
  rest.push(...argv.slice(i));
  return { path, rest, helpWord };
}

/** A value that reads as a negative number (-1, -0.5, -.5, -1d): no option looks like that. */
const NEGATIVE_NUMBER = /^-\.?\d/;

/**
 * `--rpm -1`: parseArgs refuses a value starting with a dash, as ambiguous. A negative number cannot be an
 * option, so it is taken as `--rpm=-1` would be, and the command says what is wrong with it.
 */
function attachNegativeNumbers(args: string[], options: OptionSpecs): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') {
      out.push(...args.slice(i));
      break;
    }
    const next = args[i + 1];
    if (arg.startsWith('--') && options[arg.slice(2)]?.type === 'string' && next !== undefined && NEGATIVE_NUMBER.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
    } else out.push(arg);
  }
  return out;
}

function parse(args: string[], options: OptionSpecs, path: string[]) {
  try {
    return parseArgs({ args: attachNegativeNumbers(args, options), options, strict: true, allowPositionals: true });
  } catch (err) {
    const e = err as { code?: string; message?: string };
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const option = /'([^']+)'/.exec(e.message ?? '')?.[1];
      throw new UsageError(option ? `unknown option '${option}'` : 'unknown option', path);
    }
    // `--name --json`: the value is missing, or starts with a dash and must be attached with `=`.
    const ambiguous = /^Option '(--[^']+)' argument is ambiguous/.exec(e.message ?? '');
    if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && ambiguous) {
      const flag = ambiguous[1]!;
      throw new UsageError(`${flag} is missing its value (a value starting with '-' is written ${flag}=VALUE)`, path);
    }
    if (typeof e.code === 'string' && e.code.startsWith('ERR_PARSE_ARGS')) {
      throw new UsageError((e.message ?? 'invalid arguments').split('\n')[0]!, path);
    }
    throw err;
  }
}

/** The gateway's base URL, checked: http(s), no credentials (they would end up in messages). */
function gatewayUrl(raw: string, source: string, path: string[]): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new UsageError(`${source} is not a valid URL (expected e.g. ${DEFAULT_URL})`, path);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`${source} must be an http:// or https:// URL`, path);
  if (url.username || url.password) throw new UsageError(`${source} must not contain a user name or password`, path);
  return url.origin + url.pathname.replace(/\/+$/, '');
}

async function dispatch(argv: string[], io: CliIO): Promise<number> {
  const { path, rest, helpWord } = resolve(argv);
  const node = path[path.length - 1]!;
  const words = names(path);
  const beforeDashes = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
  if (helpWord || beforeDashes.some((t) => HELP_FLAGS.has(t))) {
    io.stdout(`${renderHelp(path)}\n`);
    return EXIT_OK;
  }

  if (node.subcommands || !node.run) {
    parse(rest, GLOBAL_OPTIONS, words); // reports a bad option before the missing command
    io.stderr(`error: missing command\n\n${renderHelp(path)}\n`);
    return EXIT_USAGE;
  }

  const { values, positionals } = parse(rest, { ...GLOBAL_OPTIONS, ...node.options }, words);
  const expected = node.args ?? [];
  if (positionals.length < expected.length) throw new UsageError(`missing ${expected.slice(positionals.length).join(' ')}`, words);
  if (positionals.length > expected.length) throw new UsageError(`unexpected argument '${positionals[expected.length]}'`, words);
  positionals.forEach((p, i) => {
    if (!p.trim()) throw new UsageError(`${expected[i]} cannot be empty`, words);
  });

  const value = (name: string) => (values as Record<string, unknown>)[name];
  const string = (name: string) => {
    const v = value(name);
    return typeof v === 'string' ? v : Array.isArray(v) ? (v.at(-1) as string | undefined) : undefined;
  };
  let client: AdminClient | undefined;
  const ctx: CommandContext = {
    path: words,
    positionals,
    json: value('json') === true,
    io,
    string,
    strings: (name) => {
      const v = value(name);
      return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : typeof v === 'string' ? [v] : [];
    },
    flag: (name) => value(name) === true,
    client() {
      if (client) return client;
      const flagUrl = string('url');
      const envUrl = io.env.TOLLGATE_URL || undefined;
      const url = gatewayUrl(flagUrl ?? envUrl ?? DEFAULT_URL, flagUrl !== undefined ? '--url' : envUrl ? 'TOLLGATE_URL' : 'the URL', words);
      const flagToken = string('token');
      // An empty --token (`--token "$UNSET_VAR"`) is a mistake: never quietly use another token instead.
      if (flagToken !== undefined && !flagToken.trim()) {
        throw new UsageError('--token cannot be empty: give the admin token, or leave --token out to use TOLLGATE_ADMIN_TOKEN or ADMIN_TOKEN', words);
      }
      // A blank variable counts as unset (as TOLLGATE_URL does): TOLLGATE_ADMIN_TOKEN=' ' falls back to ADMIN_TOKEN.
      const token = flagToken?.trim() || io.env.TOLLGATE_ADMIN_TOKEN?.trim() || io.env.ADMIN_TOKEN?.trim() || '';
      if (!token) throw new UsageError('no admin token: set TOLLGATE_ADMIN_TOKEN (or ADMIN_TOKEN), or pass --token', words);
      if (!/^[\x21-\x7e]+$/.test(token)) throw new UsageError('the admin token contains characters that cannot be sent in a header', words);
      client = new AdminClient({ url, token });
      return client;
    },
    // Human output: every line is made safe to print (control and bidi characters escaped), whichever command built it.
    out: (text) => void io.stdout(`${text.split('\n').map(clean).join('\n')}\n`),
    printJson: (v) => void io.stdout(`${JSON.stringify(v, null, 2)}\n`),
  };
  const code = await node.run(ctx);
  return typeof code === 'number' ? code : EXIT_OK;
}

/** Every value given to --token on this command line, so messages can never echo it. */
function tokenFlagValues(argv: string[]): string[] {
  const found: string[] = [];
  argv.forEach((arg, i) => {
    if (arg === '--token' && argv[i + 1] !== undefined) found.push(argv[i + 1]!);
    else if (arg.startsWith('--token=')) found.push(arg.slice('--token='.length));
  });
  return found;
}

/**
 * Runs the CLI with these arguments (without `node` and the script) and returns the exit status:
 * 0 on success, 1 when the API refuses or cannot be reached, 2 on a usage error.
 */
export async function main(argv: string[], io: CliIO): Promise<number> {
  // Belt and braces: nothing this program prints may contain the admin token, whatever produced the text.
  const secrets = [io.env.TOLLGATE_ADMIN_TOKEN, io.env.ADMIN_TOKEN, ...tokenFlagValues(argv)]
    .map((s) => s?.trim())
    .filter((s): s is string => !!s && s.length >= 8);
  const redact = (s: string) => secrets.reduce((text, secret) => text.split(secret).join('[redacted]'), s);
  const safeIo: CliIO = {
    env: io.env,
    stdout: (s) => void io.stdout(redact(s)),
    stderr: (s) => void io.stderr(redact(s)),
  };
  const fail = (message: string, hint?: string) => safeIo.stderr(`error: ${clean(message)}\n${hint ? `${hint}\n` : ''}`);

  try {
    return await dispatch(argv, safeIo);
  } catch (err) {
    if (err instanceof UsageError) {
      const words = err.path.length ? err.path : ['tollgate'];
      fail(err.message, `Run '${words.join(' ')} --help' for usage.`);
      return EXIT_USAGE;
    }
    if (err instanceof ApiError) {
      let hint: string | undefined;
      if (err.status === 401) hint = 'hint: check the admin token (--token, TOLLGATE_ADMIN_TOKEN or ADMIN_TOKEN).';
      if (err.unknownRoute) hint = 'hint: is the admin API on? The gateway serves /admin only when its ADMIN_TOKEN is set.';
      fail(err.message, hint);
      return EXIT_ERROR;
    }
    if (err instanceof ConnectionError) {
      fail(err.message);
      return EXIT_ERROR;
    }
    fail(err instanceof Error ? err.message : String(err));
    return EXIT_ERROR;
  }
}

/** True when this file is the script node was asked to run (directly, without its extension, or through an npm bin link). */
function invokedDirectly(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  const canonical = (file: string) => {
    let real: string;
    try {
      real = realpathSync(file);
    } catch {
      real = join(realpathSync(dirname(file)), basename(file)); // `node dist/cli/tollgate`: no such file as such
    }
    return real.replace(/\.[cm]?[jt]s$/, '');
  };
  try {
    return canonical(resolvePath(script)) === canonical(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (invokedDirectly()) {
  // `tollgate keys list | head` closes stdout early: that is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? EXIT_OK);
    throw err;
  });
  void main(process.argv.slice(2), {
    env: process.env,
    stdout: (s) => void process.stdout.write(s),
    stderr: (s) => void process.stderr.write(s),
  }).then((code) => {
    process.exitCode = code;
  });
}
