// Help text, built from the command tree so every command's help has the same shape.
import type { Command, OptionSpecs } from './command.js';

export const DEFAULT_URL = 'http://127.0.0.1:8080';

/** Options every command takes. */
export const GLOBAL_OPTIONS: OptionSpecs = {
  url: { type: 'string', value: 'URL', description: `Gateway address (env TOLLGATE_URL; default ${DEFAULT_URL})` },
  token: {
    type: 'string',
    value: 'TOKEN',
    description: 'Admin token (env TOLLGATE_ADMIN_TOKEN, else ADMIN_TOKEN).\nPrefer the environment: flags are visible to other users in ps',
  },
  json: { type: 'boolean', description: "Print the API's JSON instead of human output (for scripts)" },
  help: { type: 'boolean', short: 'h', description: 'Show help' },
};

function optionLines(options: OptionSpecs, width: number): string[] {
  const lines: string[] = [];
  for (const [name, spec] of Object.entries(options)) {
    const flag = `${spec.short ? `-${spec.short}, ` : ''}--${name}${spec.value ? ` ${spec.value}` : ''}`;
    const [first, ...rest] = spec.description.split('\n');
    lines.push(`  ${flag.padEnd(width)}  ${first}${spec.multiple ? ' (repeatable)' : ''}`);
    for (const line of rest) lines.push(`  ${''.padEnd(width)}  ${line}`);
  }
  return lines;
}

function flagWidth(...sets: OptionSpecs[]): number {
  let width = 0;
  for (const options of sets) {
    for (const [name, spec] of Object.entries(options)) {
      width = Math.max(width, `${spec.short ? `-${spec.short}, ` : ''}--${name}${spec.value ? ` ${spec.value}` : ''}`.length);
    }
  }
  return width;
}

/** Help for the last command of `path` (path[0] is the root, `tollgate`). */
export function renderHelp(path: Command[]): string {
  const node = path[path.length - 1]!;
  const words = path.map((c) => c.name).join(' ');
  const out: string[] = [];
  if (node.subcommands) {
    out.push(`${words}: ${node.summary}`, '', 'Usage:', `  ${words} <command> [options]`, '', 'Commands:');
    const width = Math.max(...node.subcommands.map((c) => c.name.length));
    for (const c of node.subcommands) out.push(`  ${c.name.padEnd(width)}  ${c.summary}`);
    out.push('', 'Global options:', ...optionLines(GLOBAL_OPTIONS, flagWidth(GLOBAL_OPTIONS)), '');
    out.push(`Run '${words} <command> --help' (or '${path[0]!.name} help ${path.slice(1).map((c) => `${c.name} `).join('')}<command>') for a command's options.`);
    if (path.length === 1) out.push('Exit status: 0 on success, 1 when the API refuses or cannot be reached, 2 on a usage error.');
  } else {
    const options = node.options ?? {};
    const width = flagWidth(options, GLOBAL_OPTIONS);
    out.push(`${words}: ${node.summary}`, '', 'Usage:', `  ${words}${node.usage ? ` ${node.usage}` : ''}`);
    if (node.description) out.push('', node.description.trim());
    if (Object.keys(options).length) out.push('', 'Options:', ...optionLines(options, width));
    out.push('', 'Global options:', ...optionLines(GLOBAL_OPTIONS, width));
  }
  return out.join('\n');
}
