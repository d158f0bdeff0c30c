// Every top-level command of `tollgate`. To add one (e.g. `usage`): write commands/<name>.ts exporting a
// Command (see ../command.ts; keys.ts is an example), then list it here. Help and dispatch pick it up.
import type { Command } from '../command.js';
import { keysCommand } from './keys.js';
import { usageCommand } from './usage.js';

export const commands: Command[] = [keysCommand, usageCommand];
