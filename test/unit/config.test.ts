// loadConfig: defaults, demo mode, and one error naming every problem.
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.js';

describe('loadConfig', () => {
  it('applies the documented defaults', () => {
    const c = loadConfig({ OPENAI_API_KEY: 'sk-x' });
    expect(c).toMatchObject({
      port: 8080,
      host: '0.0.0.0',
      logLevel: 'info',
      logBodies: false,
      demo: false,
      bodyLimitBytes: 10 * 1024 * 1024,
      clientRequestTimeoutMs: 60_000,
      upstream: { baseUrl: 'https://api.openai.com/v1', apiKey: 'sk-x' },
    });
    expect(c.redis).toBeUndefined();
    expect(c.adminToken).toBeUndefined();
    expect(c.heap).toEqual({ maxSemiSpaceMb: 4, growingPercent: 15 });
    expect(c.memoryTrimIntervalMs).toBe(1000);
  });

  it('reads how often freed native memory is given back, 0 meaning never', () => {
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', MEMORY_TRIM_INTERVAL_MS: '0' }).memoryTrimIntervalMs).toBe(0);
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', MEMORY_TRIM_INTERVAL_MS: '30000' }).memoryTrimIntervalMs).toBe(30_000);
    expect(() => loadConfig({ OPENAI_API_KEY: 'sk-x', MEMORY_TRIM_INTERVAL_MS: '-1' })).toThrow(/MEMORY_TRIM_INTERVAL_MS/);
  });

  it('reads the V8 heap settings, 0 meaning V8\'s own sizing', () => {
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', V8_MAX_SEMI_SPACE_MB: '0', V8_HEAP_GROWING_PERCENT: '0' }).heap).toEqual({ maxSemiSpaceMb: 0, growingPercent: 0 });
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', V8_MAX_SEMI_SPACE_MB: '8', V8_HEAP_GROWING_PERCENT: '50' }).heap).toEqual({ maxSemiSpaceMb: 8, growingPercent: 50 });
    expect(() => loadConfig({ OPENAI_API_KEY: 'sk-x', V8_MAX_SEMI_SPACE_MB: '64' })).toThrow(/V8_MAX_SEMI_SPACE_MB/);
  });

  it('treats empty variables as unset (as an env file with blank entries gives)', () => {
    const c = loadConfig({ OPENAI_API_KEY: 'sk-x', PORT: '', REDIS_URL: '', ADMIN_TOKEN: '', LOG_BODIES: '' });
    expect(c.port).toBe(8080);
    expect(c.redis).toBeUndefined();
    expect(c.adminToken).toBeUndefined();
  });

  it('reads every variable it documents', () => {
    const c = loadConfig({
      OPENAI_API_KEY: 'sk-x',
      PORT: '9000',
      OPENAI_BASE_URL: 'http://localhost:1234/v1/',
      OPENAI_ORGANIZATION: 'org-1',
      REDIS_URL: 'redis://127.0.0.1:6380',
      ADMIN_TOKEN: 'a'.repeat(20),
      LOG_BODIES: 'true',
      BODY_LIMIT_BYTES: '2048',
      CLIENT_REQUEST_TIMEOUT_MS: '0',
    });
    expect(c.port).toBe(9000);
    expect(c.upstream.baseUrl).toBe('http://localhost:1234/v1');
    expect(c.upstream.organization).toBe('org-1');
    expect(c.redis).toMatchObject({ url: 'redis://127.0.0.1:6380', prefix: 'tg:', commandTimeoutMs: 1000 });
    expect(c.logBodies).toBe(true);
    expect(c.bodyLimitBytes).toBe(2048);
    expect(c.clientRequestTimeoutMs).toBe(0);
  });

  it('names every problem in one error', () => {
    let error: unknown;
    try {
      loadConfig({ PORT: 'eighty', LOG_LEVEL: 'loud', ADMIN_TOKEN: 'short', OPENAI_BASE_URL: 'ftp://x' });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    for (const name of ['PORT', 'LOG_LEVEL', 'ADMIN_TOKEN', 'OPENAI_BASE_URL']) expect(message).toContain(name);
    expect(message).not.toContain('short'); // values, which may be secrets, are not echoed
  });

  it('requires METRICS_TOKEN to be at least 16 characters, like ADMIN_TOKEN, without printing it', () => {
    for (const token of ['metrics-tok-15c', 'q7', 'Z'.repeat(15)]) {
      expect(token.length).toBeLessThan(16);
      let error: unknown;
      try {
        loadConfig({ OPENAI_API_KEY: 'sk-x', METRICS_TOKEN: token });
      } catch (err) {
        error = err;
      }
      expect(error, token).toBeInstanceOf(ConfigError);
      const problems = (error as ConfigError).problems;
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatch(/^METRICS_TOKEN: must be at least 16 characters/);
      expect((error as Error).message).not.toContain(token);
    }
    // Surrounding blanks are trimmed before counting: 15 characters padded with spaces is still too short.
    expect(() => loadConfig({ OPENAI_API_KEY: 'sk-x', METRICS_TOKEN: `   ${'m'.repeat(15)}   ` })).toThrow(/METRICS_TOKEN/);
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', METRICS_TOKEN: 'm'.repeat(16) }).metricsToken).toBe('m'.repeat(16));
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', METRICS_TOKEN: '' }).metricsToken).toBeUndefined();
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x' }).metricsToken).toBeUndefined();
  });

  // The bearer parser takes one word of printable characters: such a token could never authenticate.
  it('refuses an ADMIN_TOKEN or METRICS_TOKEN that cannot be sent as one bearer word, naming it, never printing it', () => {
    const bad = [
      'admin token with spaces 0123',
      'admin-token-0123456789\tsecond-part',
      'admin-token-0123456789\u00a0nbsp',
      'admin-token-0123456789\u0007bell',
      'admin-token-0123456789\u007fdel',
      'admin-token-0123456789-caf\u00e9',
      'admin-token-0123456789-\u20ac-euro',
      'admin-token-0123456789-\u{1f511}',
    ];
    for (const name of ['ADMIN_TOKEN', 'METRICS_TOKEN']) {
      for (const token of bad) {
        let error: unknown;
        try {
          loadConfig({ OPENAI_API_KEY: 'sk-x', [name]: token });
        } catch (err) {
          error = err;
        }
        expect(error, `${name} ${JSON.stringify(token)}`).toBeInstanceOf(ConfigError);
        const problems = (error as ConfigError).problems;
        expect(problems, JSON.stringify(token)).toEqual([expect.stringMatching(new RegExp(`^${name}: must be printable ASCII without spaces`))]);
        expect((error as Error).message).not.toContain(token);
        expect((error as Error).message).not.toContain('admin-token-0123456789');
      }
      // Every printable ASCII character is fine, and blanks around the token are trimmed as before.
      const printable = Array.from({ length: 94 }, (_, i) => String.fromCharCode(0x21 + i)).join('');
      const ok = loadConfig({ OPENAI_API_KEY: 'sk-x', [name]: `  ${printable}\n` });
      expect(name === 'ADMIN_TOKEN' ? ok.adminToken : ok.metricsToken).toBe(printable);
    }
  });

  it('requires OPENAI_API_KEY outside demo mode', () => {
    expect(() => loadConfig({})).toThrow(/OPENAI_API_KEY/);
    expect(loadConfig({}, ['--demo']).demo).toBe(true);
    expect(loadConfig({ TOLLGATE_DEMO: 'true' }).demo).toBe(true);
  });
});

describe('REDIS_URL validation', () => {
  it.each([
    'redis://user:supersecretpw@127.0.0.1:notaport',
    'redis://:supersecretpw@127.0.0.1:99999',
    'redis://:supersecretpw@127.0.0.1:0',
    'redis://:supersecretpw@127.0.0.1:6379/notadb',
    'rediss://:supersecretpw@bad host:6379',
  ])('rejects %s as configuration, without printing the value', (url) => {
    let err: unknown;
    try {
      loadConfig({ OPENAI_API_KEY: 'sk-x', REDIS_URL: url });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain('REDIS_URL');
    expect((err as Error).message).not.toContain('supersecretpw');
  });

  it.each(['redis://127.0.0.1:6379', 'redis://user:pw@h:6380/2', 'rediss://[::1]:6379', 'redis://h', 'redis://:p%40ss@h:1/0?family=6'])(
    'accepts %s',
    (url) => {
      expect(loadConfig({ OPENAI_API_KEY: 'sk-x', REDIS_URL: url }).redis?.url).toBe(url);
    },
  );
});

/** The ConfigError loadConfig throws for these variables (fails the test when it throws none). */
function configError(env: Record<string, string>): string {
  try {
    loadConfig({ OPENAI_API_KEY: 'sk-x', ...env }, [], () => undefined);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error(`accepted: ${JSON.stringify(env)}`);
}

describe('integers are plain decimal digits', () => {
  it.each([
    ['PORT', '0x1F90'],
    ['PORT', '0b11'],
    ['PORT', '0o17'],
    ['SHUTDOWN_TIMEOUT_MS', '1e3'],
    ['SHUTDOWN_TIMEOUT_MS', '1000.0'],
    ['UPSTREAM_MAX_RETRIES', '+2'],
    ['CACHE_TTL_SECONDS', 'Infinity'],
  ])('refuses %s=%s, naming it', (name, value) => {
    expect(configError({ [name]: value })).toContain(name);
  });

  it('reads decimal digits, blanks around them trimmed', () => {
    const c = loadConfig({ OPENAI_API_KEY: 'sk-x', PORT: ' 9000 ', SHUTDOWN_TIMEOUT_MS: '1000', UPSTREAM_MAX_RETRIES: '0' });
    expect(c.port).toBe(9000);
    expect(c.shutdownTimeoutMs).toBe(1000);
    expect(c.upstream.maxRetries).toBe(0);
  });
});

describe('retry delays', () => {
  it('takes a base above the maximum (backoff is capped at the maximum: it then waits about that every time)', () => {
    // A deployment that lowered only the cap keeps starting.
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', UPSTREAM_RETRY_MAX_DELAY_MS: '100' }).upstream).toMatchObject({ retryBaseDelayMs: 500, retryMaxDelayMs: 100 });
  });
});

describe('ALERT_WEBHOOK_URL', () => {
  it.each(['http://u:hooksecretpw@alerts.example/hook', 'https://:hooksecretpw@alerts.example/hook', 'https://hooksecretpw@alerts.example/hook'])(
    'refuses credentials in the URL (undici cannot send it), naming the variable without printing the value: %s',
    (url) => {
      const message = configError({ ALERT_WEBHOOK_URL: url });
      expect(message).toContain('ALERT_WEBHOOK_URL');
      expect(message).not.toContain('hooksecretpw');
    },
  );

  it('accepts a URL with a token in its path or query', () => {
    const url = 'https://alerts.example/hook/abc123?token=xyz';
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', ALERT_WEBHOOK_URL: url }).alertWebhookUrl).toBe(url);
  });
});

describe('CORS_ORIGINS', () => {
  it.each(['bogus', 'https://app.example.com/path', 'app.example.com', 'https://app.example.com?x=1', 'https://u@app.example.com', 'https://App.example.com', 'https://app.example.com:443', 'https://a.example, nope'])(
    'refuses %s, naming the variable',
    (origins) => {
      expect(configError({ CORS_ORIGINS: origins })).toContain('CORS_ORIGINS');
    },
  );

  it('accepts origins (a trailing slash tolerated) and *', () => {
    const origins = 'https://app.example.com, http://localhost:3000, https://app.example.com/, *, chrome-extension://abcdef, null';
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', CORS_ORIGINS: origins }).corsOrigins).toEqual([
      'https://app.example.com',
      'http://localhost:3000',
      'https://app.example.com/',
      '*',
      'chrome-extension://abcdef',
      'null',
    ]);
  });
});

describe('TRUST_PROXY', () => {
  it.each([
    ['false', false],
    ['', false],
    ['0', false],
    ['loopback', ['loopback']],
    ['10.0.0.0/8, 192.168.1.7, ::1, fd00::/8, uniquelocal', ['10.0.0.0/8', '192.168.1.7', '::1', 'fd00::/8', 'uniquelocal']],
  ] as const)('reads %j', (value, expected) => {
    const warnings: string[] = [];
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', TRUST_PROXY: value }, [], (l) => warnings.push(l)).trustProxy).toEqual(expected);
    expect(warnings).toEqual([]);
  });

  it('takes true (every hop), with a warning that clients can then choose their address', () => {
    const warnings: string[] = [];
    expect(loadConfig({ OPENAI_API_KEY: 'sk-x', TRUST_PROXY: 'true' }, [], (l) => warnings.push(l)).trustProxy).toBe(true);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('TRUST_PROXY');
  });

  it.each(['nope', '10.0.0.0/33', '10.0.0/8', '::1/129', '10.0.0.1/8/1', 'proxy.example.com', '2'])('refuses %s, naming the variable', (value) => {
    expect(configError({ TRUST_PROXY: value })).toContain('TRUST_PROXY');
  });
});

describe('variables that look like Tollgate\'s and are not', () => {
  it('are each one start-up warning naming the nearest real one, never their value; the machine\'s own are left alone', () => {
    const warnings: string[] = [];
    const env = {
      OPENAI_API_KEY: 'sk-x',
      REDIS_ULR: 'redis://:hunter2@redis:6379', // would start a memory-only instance without a word
      ADMNI_TOKEN: 'secret-admin',
      QUOTA_FAIL_MOD: 'open',
      CACHE_TTL: '60',
      HOME: '/root',
      PATH: '/usr/bin',
      NODE_OPTIONS: '--max-old-space-size=512',
      HOSTNAME: 'gateway-1',
      // What Kubernetes sets for Services named redis and tollgate (service links), and other tools' own.
      REDIS_PORT: 'tcp://10.0.0.7:6379',
      REDIS_PORT_6379_TCP: 'tcp://10.0.0.7:6379',
      REDIS_PORT_6379_TCP_ADDR: '10.0.0.7',
      REDIS_PORT_6379_TCP_PORT: '6379',
      REDIS_PORT_6379_TCP_PROTO: 'tcp',
      REDIS_SERVICE_HOST: '10.0.0.7',
      REDIS_SERVICE_PORT: '6379',
      REDIS_SERVICE_PORT_REDIS: '6379',
      TOLLGATE_PORT_8080_TCP: 'tcp://10.0.0.8:8080',
      OPENAI_LOG: 'debug',
      LOG_FORMAT: 'json',
      // The SDK's name for one of ours: it would send no organization header.
      OPENAI_ORG_ID: 'org-x',
    };
    const c = loadConfig(env, [], (line) => warnings.push(line));
    expect(c.redis).toBeUndefined();
    expect(warnings).toEqual([
      expect.stringContaining('REDIS_ULR is not a Tollgate variable, and is ignored (did you mean REDIS_URL?)'),
      expect.stringContaining('ADMNI_TOKEN is not a Tollgate variable, and is ignored (did you mean ADMIN_TOKEN?)'),
      expect.stringContaining('QUOTA_FAIL_MOD is not a Tollgate variable, and is ignored (did you mean QUOTA_FAIL_MODE?)'),
      expect.stringContaining('CACHE_TTL is not a Tollgate variable'),
      expect.stringContaining("OPENAI_ORG_ID is not a Tollgate variable, and is ignored (Tollgate's is OPENAI_ORGANIZATION)"),
    ]);
    for (const line of warnings) expect(line).not.toMatch(/hunter2|secret-admin/);
  });
});

describe('OPENAI_BASE_URL without /v1', () => {
  it('is accepted with one start-up warning naming the variable and the expected form (some compatible servers use other paths)', () => {
    const warnings: string[] = [];
    const c = loadConfig({ OPENAI_API_KEY: 'sk-x', OPENAI_BASE_URL: 'http://127.0.0.1:19001' }, [], (line) => warnings.push(line));
    expect(c.upstream.baseUrl).toBe('http://127.0.0.1:19001');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('OPENAI_BASE_URL');
    expect(warnings[0]).toContain('/v1');
    expect(warnings[0]).not.toContain('19001'); // the value is not printed
  });

  it.each(['https://api.openai.com/v1', 'http://localhost:1234/v1/', 'https://proxy.example/openai/v1'])('gives no warning for %s', (url) => {
    const warnings: string[] = [];
    loadConfig({ OPENAI_API_KEY: 'sk-x', OPENAI_BASE_URL: url }, [], (line) => warnings.push(line));
    expect(warnings).toEqual([]);
  });
});
