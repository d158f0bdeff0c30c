// Copies what tsc does not emit into dist/: the Redis Lua scripts and the dashboard's static files.
import { cpSync } from 'node:fs';

cpSync('src/store/lua', 'dist/store/lua', { recursive: true });
cpSync('src/dashboard', 'dist/dashboard', { recursive: true, filter: (path) => !path.endsWith('.ts') });
