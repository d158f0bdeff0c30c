// What a CLI command is: a group of subcommands or a leaf that runs. Commands are registered in commands/index.ts.
import type { AdminClient } from './admin-client.js';

export interface CliIO {
  env: Record<string, string | undefined>;
  stdout: (s: string) => void;
  stderr: (s: string) => void;
}

export interface OptionSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  short?: string;
  /** Placeholder shown in help after the flag, e.g. `N` for `--rpm N`. */
  value?: string;
  description: string;
}

export type OptionSpecs = Record<string, OptionSpec>;

export interface CommandContext {
  /** Every word before the options, e.g. `['keys', 'update']`: for messages. */
  path: string[];
  positionals: string[];
  /** `--json`: print the API's JSON instead of human output. */
  json: boolean;
  io: CliIO;
  /** A string option's last value, or undefined when absent. */
  string(name: string): string | undefined;
  /** Every value of a repeatable string option (empty when absent). */
  strings(name: string): string[];
  /** Was this boolean option given? */
  flag(name: string): boolean;
  /** The admin API client. Resolving it checks --url and --token, so a command asks for it only when it calls the API. */
  client(): AdminClient;
  /** Writes text to stdout, adding a final newline. */
  out(text: string): void;
  /** Writes a value as indented JSON to stdout. */
  printJson(value: unknown): void;
}

export interface Command {
  name: string;
  /** One line, shown in the parent's list of commands. */
  summary: string;
  /** A group: its subcommands (a group has no `run`). */
  subcommands?: Command[];
  /** A leaf: what follows the command words in its usage line, e.g. `ID [options]`. */
  usage?: string;
  /** A leaf: paragraphs shown in its help, under the usage line. */
  description?: string;
  /** A leaf: its own options (the global ones are added by the dispatcher). */
  options?: OptionSpecs;
  /** A leaf: names of its required positional arguments, in order. */
  args?: string[];
  /** A leaf: runs the command; returns the exit code (0 when it returns nothing). */
  run?: (ctx: CommandContext) => Promise<number | void>;
}

/** Wrong use of the command line: reported with a pointer to the help, exit status 2. */
export class UsageError extends Error {
  constructor(
    message: string,
    /** The command words whose help to point at. */
    readonly path: string[] = [],
  ) {
    super(message);
    this.name = 'UsageError';
  }
}

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;
