// Tollgate spend dashboard: reads the admin API with the token typed in. Plain browser JS, no build step.
// Every piece of data reaches the page through textContent (key names are user input): never innerHTML.
(() => {
  'use strict';

  const TOKEN_KEY = 'tollgate.adminToken';
  const REFRESH_MS = 60_000;
  const TOP_KEYS = 10;
  const RECENT_EVENTS = 50;
  /** Budget bars drawn; past that, the fullest ones. */
  const TOP_BUDGETS = 15;
  /** How long any admin request may take (headers and body) before the page gives up on it. */
  const FETCH_TIMEOUT_MS = 15_000;
  /** Longest series name in a legend or tooltip line (names are user input and may be very long). */
  const MAX_LABEL = 32;
  /** Series drawn per chart; the rest are summed into "Other". */
  const MAX_SERIES = 8;
  const PALETTE = ['#4c78a8', '#f58518', '#54a24b', '#e45756', '#72b7b2', '#eeca3b', '#b279a2', '#9d755d'];
  const OTHER_COLOR = '#c5cad3';
  const PERIODS = {
    '24h': { bucket: 'hour', hours: 24, label: 'Last 24 hours' },
    '7d': { bucket: 'day', days: 7, label: 'Last 7 days' },
    '30d': { bucket: 'day', days: 30, label: 'Last 30 days' },
  };
  /** Budgets (not rates) that get a bar: [limit name, label, unit]. */
  const BUDGETS = [
    ['usdPerDay', 'USD today', 'usd'],
    ['usdPerMonth', 'USD this month', 'usd'],
    ['tokensPerDay', 'tokens today', 'tokens'],
    ['tokensPerMonth', 'tokens this month', 'tokens'],
  ];

  const state = {
    period: '7d',
    /** The time zone the gateway's reports use (it says so in every answer); days are counted in it. */
    timeZone: 'UTC',
    signedIn: false,
    /** Bumped by every load and by log out, so an answer that arrives late is dropped. */
    generation: 0,
    timer: 0,
    /** "Updated hh:mm:ss zone" of the last load that got usage back. */
    updatedAt: '',
    charts: { keys: null, models: null },
  };

  // ---------------------------------------------------------------- DOM helpers

  const byId = (id) => document.getElementById(id);
  const testId = (id) => document.querySelector(`[data-testid="${id}"]`);

  /**
   * Characters shown escaped (\u202e), as the CLI shows them (src/cli/table.ts): control and
   * invisible format characters, line separators, lone surrogates. A bidi override in a key or
   * model name would otherwise reorder what the page shows ("\u202eevil" read as "live").
   */
  const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;
  function shown(value) {
    return String(value).replace(UNSAFE, (c) => {
      const code = c.codePointAt(0);
      if (code <= 0xff) return `\\x${code.toString(16).padStart(2, '0')}`;
      if (code <= 0xffff) return `\\u${code.toString(16).padStart(4, '0')}`;
      return `\\u{${code.toString(16)}}`;
    });
  }

  /** Builds an element; children are nodes or strings (strings become text, never markup). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'text') node.textContent = shown(value);
      else node.setAttribute(name, name === 'title' || name === 'aria-label' ? shown(value) : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === 'string' ? document.createTextNode(shown(child)) : child);
    }
    return node;
  }

  function setText(id, text, title) {
    const node = testId(id);
    if (!node) return;
    node.textContent = shown(text);
    if (title) node.title = shown(title);
    else node.removeAttribute('title');
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  /** A panel whose request failed: its note cleared, its empty-state line says so. */
  function showLoadFailure(note, empty) {
    note.textContent = '';
    empty.textContent = 'Could not be loaded.';
    show(empty, true);
  }

  // ---------------------------------------------------------------- formatting (fixed locale: ops compare screenshots)

  const usd2 = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const usd4 = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 4 });
  const usdSig = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', maximumSignificantDigits: 2 });
  const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const compact = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });

  /** Dollars with the precision the amount needs: $1,234.50, $0.0123, $0.000032. */
  function fmtUsd(value) {
    const v = Number(value) || 0;
    const abs = Math.abs(v);
    if (abs === 0) return usd2.format(0);
    if (abs >= 1) return usd2.format(v);
    if (abs >= 0.01) return usd4.format(v);
    if (abs < 0.000001) return v > 0 ? '<$0.000001' : '>-$0.000001';
    return usdSig.format(v);
  }

  /** Axis ticks: short ($0, $5, $2.50, $12K). */
  function fmtUsdAxis(value) {
    const v = Number(value) || 0;
    if (v === 0) return '$0';
    if (Math.abs(v) >= 1000) return '$' + compact.format(v);
    if (Number.isInteger(v)) return '$' + v;
    return fmtUsd(v);
  }

  /** Long names (user input) shortened for legends and tooltips, so the amounts stay visible. */
  function shorten(text, max) {
    return text.length > max ? text.slice(0, max - 1) + '…' : text;
  }

  const fmtInt = (value) => integer.format(Number(value) || 0);
  const fmtCompact = (value) => compact.format(Number(value) || 0);

  function fmtPct(part, whole) {
    if (!whole) return '–';
    return ((part / whole) * 100).toFixed(1) + '%';
  }

  function fmtLatency(ms) {
    if (typeof ms !== 'number' || !Number.isFinite(ms)) return '–';
    return ms >= 1000 ? (ms / 1000).toFixed(2) + ' s' : Math.round(ms) + ' ms';
  }

  function fmtDuration(ms) {
    if (!(ms > 0)) return 'now';
    const minutes = Math.ceil(ms / 60_000);
    const days = Math.floor(minutes / 1440);
    const hours = Math.floor((minutes % 1440) / 60);
    const mins = minutes % 60;
    if (days > 0) return `${days} d ${hours} h`;
    if (hours > 0) return `${hours} h ${mins} min`;
    return `${mins} min`;
  }

  // ---------------------------------------------------------------- time zones (the gateway's days, not the browser's)

  const formatters = new Map();
  function formatter(timeZone, options) {
    const id = timeZone + JSON.stringify(options);
    let f = formatters.get(id);
    if (!f) {
      f = new Intl.DateTimeFormat('en-US', { timeZone, ...options });
      formatters.set(id, f);
    }
    return f;
  }

  function validTimeZone(timeZone) {
    try {
      formatter(timeZone, {});
      return true;
    } catch {
      return false;
    }
  }

  /** The wall-clock fields of an instant in a time zone. */
  function wallClock(ms, timeZone) {
    const parts = formatter(timeZone, {
      hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
    }).formatToParts(new Date(ms));
    const get = (type) => Number(parts.find((p) => p.type === type)?.value);
    return { y: get('year'), m: get('month'), d: get('day'), h: get('hour'), min: get('minute'), s: get('second') };
  }

  function offsetMs(ms, timeZone) {
    const w = wallClock(ms, timeZone);
    return Date.UTC(w.y, w.m - 1, w.d, w.h, w.min, w.s) - Math.floor(ms / 1000) * 1000;
  }

  /** The instant a calendar day (y, m, d; d may overflow) starts in a time zone. */
  function dayStart(y, m, d, timeZone) {
    const guess = Date.UTC(y, m - 1, d);
    const first = guess - offsetMs(guess, timeZone);
    return guess - offsetMs(first, timeZone);
  }

  const pad = (n) => String(n).padStart(2, '0');

  function dayKey(ms, timeZone) {
    const w = wallClock(ms, timeZone);
    return `${w.y}-${pad(w.m)}-${pad(w.d)}`;
  }

  const HOUR = 3_600_000;

  /** The request window of a period: whole hours or whole days of the gateway's zone, up to now. */
  function rangeOf(period, now, timeZone) {
    const p = PERIODS[period];
    let from;
    if (p.bucket === 'hour') {
      from = Math.floor(now / HOUR) * HOUR - (p.hours - 1) * HOUR;
    } else {
      const w = wallClock(now, timeZone);
      from = dayStart(w.y, w.m, w.d - (p.days - 1), timeZone);
    }
    return { from, to: now, bucket: p.bucket };
  }

  /** Every bucket of the window (so days without traffic show as gaps), plus any the data has. */
  function bucketsOf(range, timeZone, rows) {
    const keys = new Set();
    for (let t = range.from; t <= range.to; t += HOUR) {
      keys.add(range.bucket === 'hour' ? new Date(Math.floor(t / HOUR) * HOUR).toISOString() : dayKey(t, timeZone));
    }
    for (const row of rows) {
      const b = row[range.bucket];
      if (typeof b === 'string') keys.add(b);
    }
    return [...keys].sort();
  }

  function bucketLabel(bucket, kind, timeZone) {
    if (kind === 'hour') {
      const ms = Date.parse(bucket);
      if (Number.isNaN(ms)) return bucket;
      const w = wallClock(ms, timeZone);
      return `${pad(w.h)}:${pad(w.min)}`;
    }
    const [y, m, d] = bucket.split('-').map(Number);
    if (!y || !m || !d) return bucket;
    return formatter('UTC', { month: 'short', day: 'numeric' }).format(new Date(Date.UTC(y, m - 1, d)));
  }

  function clockTime(ms, timeZone) {
    const w = wallClock(ms, timeZone);
    return `${pad(w.h)}:${pad(w.min)}:${pad(w.s)}`;
  }

  // ---------------------------------------------------------------- the admin API

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(path, status, message) {
      super(status ? `${path.split('?')[0]}: ${message} (HTTP ${status})` : message);
      this.status = status;
    }
  }

  async function errorMessage(res) {
    try {
      const body = await res.json();
      if (body && body.error && typeof body.error.message === 'string') return body.error.message;
    } catch {
      // not JSON: fall through
    }
    return res.statusText || 'request failed';
  }

  /**
   * What an HTTP header can carry and a bearer token can be: no spaces, no control characters, nothing
   * past Latin-1 (a zero-width space or curly quotes picked up by a paste would make fetch throw).
   */
  const TOKEN_CHARS = /^[\x21-\x7e\xa1-\xff]+$/;
  const BAD_TOKEN = 'The token contains characters a token cannot contain (a space, curly quotes or an invisible character?). Copy it again as plain text.';

  /** One admin request, read with `read` (json or text); gives up after FETCH_TIMEOUT_MS, body included. */
  async function call(path, read) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new AuthError('Sign in with the admin token.');
    if (!TOKEN_CHARS.test(token)) throw new AuthError(BAD_TOKEN);
    const controller = new AbortController();
    let timedOut = false;
    const timer = window.setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, FETCH_TIMEOUT_MS);
    const failure = () =>
      timedOut
        ? new ApiError(path, 0, `The gateway did not answer within ${FETCH_TIMEOUT_MS / 1000} seconds.`)
        : new ApiError(path, 0, 'The gateway could not be reached.');
    try {
      let res;
      try {
        res = await fetch(path, {
          headers: { authorization: `Bearer ${token}` },
          cache: 'no-store',
          credentials: 'omit',
          referrerPolicy: 'no-referrer',
          signal: controller.signal,
        });
      } catch {
        throw failure();
      }
      if (res.status === 401) throw new AuthError(await errorMessage(res));
      if (!res.ok) throw new ApiError(path, res.status, await errorMessage(res));
      try {
        return await res[read]();
      } catch (err) {
        if (timedOut) throw failure();
        throw err;
      }
    } finally {
      window.clearTimeout(timer);
    }
  }

  const getJson = (path) => call(path, 'json');

  /** Keys asked for per request: the admin API's most, so the fewest requests list them all. */
  const KEYS_PAGE = 1000;

  /**
   * Every key with its quota. The admin API lists keys a page at a time, so this follows the pages
   * (has_more, last_id) to the last, each request with its own timeout; resolves as one answer with
   * every key would: `{ object: 'list', data }`.
   */
  async function getAllKeys() {
    const data = [];
    let after = null;
    for (;;) {
      const query = new URLSearchParams({ include: 'quota', limit: String(KEYS_PAGE) });
      if (after !== null) query.set('after', after);
      const page = await getJson(`/admin/keys?${query}`);
      if (Array.isArray(page?.data)) data.push(...page.data);
      if (page?.has_more !== true) return { object: 'list', data };
      // A cursor that does not move on would ask for the same page forever.
      if (typeof page.last_id !== 'string' || page.last_id === after) throw new ApiError('/admin/keys', 0, 'The key list did not lead on to its next page.');
      after = page.last_id;
    }
  }

  /** NDJSON: one event per line; a line that does not parse is skipped, not fatal. */
  async function getNdjson(path) {
    const text = await call(path, 'text');
    const events = [];
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        events.push(JSON.parse(line));
      } catch {
        // a torn line: skip it
      }
    }
    return events;
  }

  function usagePath(range, groupBy) {
    const q = new URLSearchParams({ from: new Date(range.from).toISOString(), to: new Date(range.to).toISOString(), groupBy });
    return `/admin/usage?${q}`;
  }

  // ---------------------------------------------------------------- loading

  const settle = (promise) => promise.then((value) => ({ status: 'fulfilled', value }), (reason) => ({ status: 'rejected', reason }));

  function refused(reason) {
    if (reason?.message === BAD_TOKEN) return BAD_TOKEN;
    return state.signedIn ? 'The admin token was refused. Sign in again.' : 'That admin token was refused.';
  }

  /**
   * Loads every panel. `verify`: the token is not known to work yet (just typed, or read back after a
   * reload), so a failure of the first request stops there; `fromForm`: it was just typed, so that
   * failure keeps the form up.
   */
  async function load(fromForm = false, verify = fromForm) {
    const generation = ++state.generation;
    const timeZone = state.timeZone;
    const range = rangeOf(state.period, Date.now(), timeZone);
    const since = new Date(Date.now() - HOUR).toISOString();
    byId('refresh').disabled = true;

    const keysRequest = () => settle(getAllKeys());
    const others = () =>
      Promise.all(
        [
          getJson(usagePath(range, `${range.bucket},key`)),
          getJson(usagePath(range, `${range.bucket},model`)),
          getJson(usagePath(range, 'key')),
          // Only the newest few, newest first: an hour can hold 100,000+ events (tens of MB), and oldest
          // first with a limit would show the oldest. One more than shown says whether there are more.
          getNdjson(`/admin/usage/events?${new URLSearchParams({ since, format: 'ndjson', order: 'desc', limit: String(RECENT_EVENTS + 1) })}`),
        ].map(settle),
      );

    let keys;
    let rest;
    if (verify) {
      // The key list first, which the page needs anyway: a wrong token then costs one failed attempt (its
      // first page's; the gateway locks an address out after a few dozen), not one per panel.
      keys = await keysRequest();
      if (generation !== state.generation) return; // logged out, or a newer load started
      if (keys.status === 'rejected' && keys.reason instanceof AuthError) {
        signOut(refused(keys.reason));
        return;
      }
      if (keys.status === 'rejected' && fromForm) {
        // Not refused, not accepted either (admin API off, too many failed attempts, gateway down): stay on the form and say why.
        signOut(String(keys.reason?.message || keys.reason));
        return;
      }
      // After a reload, a gateway that did not answer gets no more requests: the panels all say why.
      rest = keys.status === 'rejected' ? [keys, keys, keys, keys] : await others();
    } else {
      [keys, rest] = await Promise.all([keysRequest(), others()]);
    }
    if (generation !== state.generation) return; // logged out, or a newer load started
    byId('refresh').disabled = false;
    const [byKeyTime, byModelTime, byKey, events] = rest;

    const results = [byKeyTime, byModelTime, byKey, keys, events];
    const denied = results.find((r) => r.status === 'rejected' && r.reason instanceof AuthError);
    if (denied) {
      signOut(refused(denied.reason));
      return;
    }
    const failed = results.filter((r) => r.status === 'rejected');
    const failures = [...new Set(failed.map((r) => String(r.reason?.message || r.reason)))];
    if (fromForm && failed.length === results.length) {
      signOut(failures[0]);
      return;
    }

    // Days are counted in the gateway's zone: if it is not the one assumed, ask again with the right window.
    const reported = [byKeyTime, byModelTime, byKey].find((r) => r.status === 'fulfilled' && typeof r.value.timeZone === 'string');
    if (reported && reported.value.timeZone !== timeZone && validTimeZone(reported.value.timeZone)) {
      state.timeZone = reported.value.timeZone;
      if (range.bucket === 'day') return load(fromForm, false);
    }

    enterDashboard();
    const banner = testId('banner');
    banner.textContent = failures.length ? `Some data could not be loaded: ${failures.join(' · ')}` : '';
    show(banner, failures.length > 0);

    const totalsFrom = [byKey, byKeyTime, byModelTime].find((r) => r.status === 'fulfilled');
    renderTotals(totalsFrom ? totalsFrom.value.totals : null);
    renderChart('keys', byKeyTime, range, 'key');
    renderChart('models', byModelTime, range, 'model');
    renderTopKeys(byKey);
    renderBudgets(keys);
    renderEvents(events);
    const updated = testId('updated');
    if (totalsFrom) {
      state.updatedAt = `Updated ${clockTime(Date.now(), state.timeZone)} ${state.timeZone}`;
      setText('updated', state.updatedAt);
      updated.classList.remove('stale');
    } else {
      // No usage came back: the time says when the numbers last did, and that this refresh did not.
      setText('updated', state.updatedAt ? `${state.updatedAt} · refresh failed` : 'Refresh failed', 'The last refresh could not load the usage.');
      updated.classList.add('stale');
    }
  }

  function refreshSoon() {
    window.clearInterval(state.timer);
    state.timer = window.setInterval(() => {
      if (document.visibilityState === 'visible') void load();
    }, REFRESH_MS);
  }

  // ---------------------------------------------------------------- sign in and out

  function setPending(pending) {
    const submit = byId('login-submit');
    submit.disabled = pending;
    submit.textContent = pending ? 'Checking…' : 'Open dashboard';
  }

  function enterDashboard() {
    if (state.signedIn) return;
    state.signedIn = true;
    byId('token').value = '';
    setPending(false);
    show(testId('loading'), false);
    show(byId('login'), false);
    show(byId('dashboard'), true);
    show(byId('toolbar'), true);
    refreshSoon();
  }

  function signOut(message) {
    state.generation++;
    state.signedIn = false;
    sessionStorage.removeItem(TOKEN_KEY);
    window.clearInterval(state.timer);
    byId('refresh').disabled = false;
    clearDashboard();
    show(byId('dashboard'), false);
    show(byId('toolbar'), false);
    show(testId('loading'), false);
    show(byId('login'), true);
    const error = byId('login-error');
    error.textContent = message || '';
    show(error, Boolean(message));
    setPending(false);
    byId('token').focus();
  }

  /** Nothing read with the token stays on the page after log out. */
  function clearDashboard() {
    for (const name of Object.keys(state.charts)) {
      state.charts[name]?.destroy();
      state.charts[name] = null;
    }
    for (const id of ['top-keys-body', 'events-body', 'budgets']) byId(id).replaceChildren();
    for (const node of document.querySelectorAll('.kpi-value')) node.textContent = '–';
    for (const node of document.querySelectorAll('.kpi-sub, .panel-note[data-testid]')) node.textContent = '';
    setText('updated', '');
    testId('updated').classList.remove('stale');
    state.updatedAt = '';
  }

  // ---------------------------------------------------------------- rendering

  function renderTotals(totals) {
    if (!totals || typeof totals !== 'object') {
      // Nothing loaded: say so, never $0.00 or 0 as if nothing was spent.
      for (const id of ['kpi-spend', 'kpi-requests', 'kpi-tokens', 'kpi-cache-rate', 'kpi-saved']) setText(id, '–');
      for (const id of ['kpi-errors', 'kpi-tokens-sub', 'kpi-cache-hits', 'kpi-saved-sub']) setText(id, '');
      setText('kpi-spend-sub', 'Could not be loaded.');
      return;
    }
    const t = totals;
    const requests = Number(t.requests) || 0;
    const cost = Number(t.costUsd) || 0;
    const saved = Number(t.savedUsd) || 0;
    setText('kpi-spend', fmtUsd(cost));
    setText('kpi-spend-sub', requests ? `${PERIODS[state.period].label} · ${fmtUsd(cost / requests)} per request` : PERIODS[state.period].label);
    setText('kpi-requests', fmtInt(requests));
    setText('kpi-errors', `${fmtInt(t.errors)} errors (${fmtPct(Number(t.errors) || 0, requests)})`);
    setText('kpi-tokens', fmtCompact(t.totalTokens), fmtInt(t.totalTokens) + ' tokens');
    setText('kpi-tokens-sub', `${fmtCompact(t.promptTokens)} prompt · ${fmtCompact(t.completionTokens)} completion`);
    // Among the requests the cache looked up (HIT or MISS), as the Prometheus hit ratio is: a refused
    // request (400, 429) or a BYPASS was never a miss, and must not dilute the rate. From lookups and
    // misses, not cacheHits: hours recorded before lookups were counted have hits but neither.
    const lookups = Number(t.cacheLookups) || 0;
    const lookupHits = Math.max(0, lookups - (Number(t.cacheMisses) || 0));
    setText('kpi-cache-rate', fmtPct(lookupHits, lookups));
    setText('kpi-cache-hits', `${fmtInt(lookupHits)} of ${fmtInt(lookups)} cacheable requests`);
    setText('kpi-saved', fmtUsd(saved));
    setText('kpi-saved-sub', cost + saved > 0 ? `${fmtPct(saved, cost + saved)} of the cost without cache` : 'nothing served from cache');
  }

  function keyLabel(id, name) {
    if (name) return name;
    return id || '(no key)';
  }

  /** Stacked series of costUsd per bucket: the biggest MAX_SERIES, the rest as "Other". */
  function seriesOf(rows, field, buckets, bucketField) {
    const meta = new Map(); // series id -> { label, total }
    for (const row of rows) {
      const id = row[field] ?? null;
      const entry = meta.get(id) || { label: shown(field === 'key' ? keyLabel(id, row.keyName) : id || '(unknown model)'), total: 0 };
      entry.total += Number(row.costUsd) || 0;
      meta.set(id, entry);
    }
    // Two keys may share a name: tell them apart by the end of their id.
    const names = new Map();
    for (const entry of meta.values()) names.set(entry.label, (names.get(entry.label) || 0) + 1);
    for (const [id, entry] of meta) if (id && names.get(entry.label) > 1) entry.label = `${entry.label} (…${String(id).slice(-6)})`;

    // A series that spent nothing (only refusals, or a free endpoint) has no bar: no legend entry either.
    const ranked = [...meta.entries()].filter(([, entry]) => entry.total > 0).sort((a, b) => b[1].total - a[1].total);
    const kept = ranked.length > MAX_SERIES ? ranked.slice(0, MAX_SERIES - 1) : ranked;
    const keptIds = new Set(kept.map(([id]) => id));
    const index = new Map(buckets.map((b, i) => [b, i]));
    const datasets = kept.map(([id, entry], i) => ({ id, label: entry.label, data: buckets.map(() => 0), color: PALETTE[i % PALETTE.length] }));
    const other = { id: '__other__', label: `Other (${ranked.length - kept.length})`, data: buckets.map(() => 0), color: OTHER_COLOR };
    const datasetOf = new Map(datasets.map((d) => [d.id, d]));
    for (const row of rows) {
      const i = index.get(row[bucketField]);
      if (i === undefined) continue;
      const id = row[field] ?? null;
      const target = keptIds.has(id) ? datasetOf.get(id) : other;
      target.data[i] += Number(row.costUsd) || 0;
    }
    if (ranked.length > kept.length) datasets.push(other);
    return datasets;
  }

  function renderChart(name, result, range, field) {
    const canvas = byId(`chart-${name}`);
    const empty = testId(`chart-${name}-empty`);
    const note = testId(`chart-${name}-note`);
    state.charts[name]?.destroy();
    state.charts[name] = null;
    if (result.status !== 'fulfilled') {
      showLoadFailure(note, empty);
      return;
    }
    const rows = Array.isArray(result.value.data) ? result.value.data : [];
    const buckets = bucketsOf(range, state.timeZone, rows);
    const datasets = seriesOf(rows, field, buckets, range.bucket);
    const total = rows.reduce((sum, r) => sum + (Number(r.costUsd) || 0), 0);
    note.textContent = `per ${range.bucket} · ${state.timeZone}`;
    empty.textContent = 'No spend in this period.';
    show(empty, total === 0);

    if (typeof window.Chart !== 'function') {
      empty.textContent = 'The chart library did not load.';
      show(empty, true);
      return;
    }
    state.charts[name] = new window.Chart(canvas, {
      type: 'bar',
      data: {
        labels: buckets.map((b) => bucketLabel(b, range.bucket, state.timeZone)),
        datasets: datasets.map((d) => ({
          label: d.label,
          data: d.data,
          backgroundColor: d.color,
          borderColor: d.color,
          borderWidth: 0,
          borderRadius: 2,
          maxBarThickness: 36,
        })),
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: 'index', intersect: false },
        scales: {
          x: { stacked: true, grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
          y: { stacked: true, beginAtZero: true, border: { display: false }, ticks: { callback: (v) => fmtUsdAxis(v), maxTicksLimit: 6 } },
        },
        plugins: {
          legend: {
            position: 'bottom',
            labels: {
              boxWidth: 10,
              boxHeight: 10,
              padding: 14,
              generateLabels: (chart) =>
                window.Chart.defaults.plugins.legend.labels.generateLabels(chart).map((item) => ({ ...item, text: shorten(item.text, MAX_LABEL) })),
            },
          },
          tooltip: {
            filter: (item) => item.parsed.y !== 0,
            itemSort: (a, b) => b.parsed.y - a.parsed.y,
            callbacks: {
              label: (ctx) => ` ${shorten(ctx.dataset.label, MAX_LABEL)}: ${fmtUsd(ctx.parsed.y)}`,
              footer: (items) => `Total: ${fmtUsd(items.reduce((s, i) => s + i.parsed.y, 0))}`,
            },
          },
        },
      },
    });
  }

  function cell(testid, text, cls, title) {
    return el('td', { 'data-testid': testid, class: cls, title }, String(text));
  }

  function renderTopKeys(result) {
    const body = byId('top-keys-body');
    const note = testId('top-keys-note');
    const empty = testId('top-keys-empty');
    body.replaceChildren();
    if (result.status !== 'fulfilled') {
      showLoadFailure(note, empty);
      return;
    }
    const rows = (Array.isArray(result.value.data) ? result.value.data : [])
      .slice()
      .sort((a, b) => (Number(b.costUsd) || 0) - (Number(a.costUsd) || 0) || (Number(b.requests) || 0) - (Number(a.requests) || 0));
    const totalCost = Number(result.value.totals?.costUsd) || rows.reduce((s, r) => s + (Number(r.costUsd) || 0), 0);
    note.textContent = rows.length > TOP_KEYS ? `top ${TOP_KEYS} of ${rows.length} keys` : `${rows.length} ${rows.length === 1 ? 'key' : 'keys'}`;
    empty.textContent = 'No requests in this period.';
    show(empty, rows.length === 0);
    for (const row of rows.slice(0, TOP_KEYS)) {
      const share = totalCost > 0 ? (Number(row.costUsd) || 0) / totalCost : 0;
      const bar = el('span', { class: 'share-bar' });
      bar.style.width = `${Math.min(100, share * 100)}%`;
      body.append(
        el(
          'tr',
          { 'data-testid': 'top-key-row', 'data-key-id': row.key ?? '' },
          el(
            'td',
            { class: 'key-cell' },
            el('span', { class: 'key-name', 'data-testid': 'top-key-name', title: keyLabel(row.key, row.keyName), text: keyLabel(row.key, row.keyName) }),
            row.key && row.keyName ? el('span', { class: 'key-id', text: row.key }) : null,
          ),
          cell('top-key-spend', fmtUsd(row.costUsd), 'num strong'),
          el('td', { class: 'num share-cell' }, el('span', { 'data-testid': 'top-key-share', text: fmtPct(Number(row.costUsd) || 0, totalCost) }), el('span', { class: 'share-track' }, bar)),
          cell('top-key-requests', fmtInt(row.requests), 'num'),
          cell('top-key-tokens', fmtCompact(row.totalTokens), 'num', `${fmtInt(row.totalTokens)} tokens`),
          cell('top-key-cache-hits', fmtInt(row.cacheHits), 'num'),
          cell('top-key-errors', fmtInt(row.errors), Number(row.errors) > 0 ? 'num warn' : 'num'),
        ),
      );
    }
  }

  function fmtBudget(value, unit) {
    return unit === 'usd' ? fmtUsd(value) : fmtCompact(value);
  }

  function renderBudgets(result) {
    const box = byId('budgets');
    const empty = testId('budgets-empty');
    const note = testId('budgets-note');
    box.replaceChildren();
    note.textContent = '';
    if (result.status !== 'fulfilled') {
      box.append(el('p', { class: 'empty', text: 'Could not be loaded.' }));
      show(empty, false);
      return;
    }
    const keys = Array.isArray(result.value.data) ? result.value.data : [];
    const lines = [];
    for (const key of keys) {
      if (key.revokedAt) continue;
      for (const [name, label, unit] of BUDGETS) {
        const q = key.quota?.[name];
        const limit = Number(q?.limit ?? key.limits?.[name]);
        if (!(limit > 0)) continue;
        const used = Number(q?.used) || 0;
        const reserved = Number(q?.reserved) || 0;
        lines.push({ key, name, label, unit, limit, used, reserved, resetsAt: q?.resetsAt ? Date.parse(q.resetsAt) : NaN, share: used / limit });
      }
    }
    // The keys closest to their limit first: that is what ops act on.
    lines.sort((a, b) => b.share - a.share);
    show(empty, lines.length === 0);
    // Hundreds of keys would make the page metres long: only the fullest budgets get a bar.
    note.textContent =
      lines.length > TOP_BUDGETS ? `top ${TOP_BUDGETS} of ${lines.length} budgets` : 'today and this month, per key';
    const now = Date.now();
    for (const line of lines.slice(0, TOP_BUDGETS)) {
      const pct = line.share * 100;
      const level = pct >= 90 ? 'bad' : pct >= 70 ? 'warn' : 'ok';
      const usedBar = el('span', { class: `bar-used bar-${level}` });
      usedBar.style.width = `${Math.min(100, pct)}%`;
      const reservedBar = el('span', { class: 'bar-reserved' });
      reservedBar.style.width = `${Math.max(0, Math.min(100 - Math.min(100, pct), (line.reserved / line.limit) * 100))}%`;
      const reservedText = line.reserved > 0 ? `+${fmtBudget(line.reserved, line.unit)} in flight` : '';
      const resets = Number.isNaN(line.resetsAt) ? '' : `resets in ${fmtDuration(line.resetsAt - now)}`;
      box.append(
        el(
          'div',
          { class: 'budget', 'data-testid': 'budget-row', 'data-key-id': line.key.id, 'data-budget': line.name },
          el(
            'div',
            { class: 'budget-head' },
            el('span', { class: 'budget-key', 'data-testid': 'budget-key', title: `${keyLabel(line.key.id, line.key.name)} (${line.key.id})`, text: keyLabel(line.key.id, line.key.name) }),
            el('span', { class: 'budget-kind', text: line.label }),
            el('span', { class: `budget-pct pct-${level}`, 'data-testid': 'budget-percent', text: `${pct.toFixed(1)}%` }),
          ),
          el(
            'div',
            {
              class: 'bar',
              role: 'progressbar',
              'aria-label': `${keyLabel(line.key.id, line.key.name)}, ${line.label}`,
              'aria-valuemin': 0,
              'aria-valuemax': 100,
              'aria-valuenow': Math.round(Math.min(100, pct)),
            },
            usedBar,
            reservedBar,
          ),
          el(
            'div',
            { class: 'budget-foot' },
            el('span', { 'data-testid': 'budget-used', text: `${fmtBudget(line.used, line.unit)} of ${fmtBudget(line.limit, line.unit)}` }),
            el('span', { class: 'muted', 'data-testid': 'budget-detail', text: [reservedText, resets].filter(Boolean).join(' · ') }),
          ),
        ),
      );
    }
  }

  function statusClass(status) {
    if (status >= 500) return 'badge badge-bad';
    if (status === 429) return 'badge badge-warn';
    if (status >= 400) return 'badge badge-warn';
    return 'badge badge-ok';
  }

  function renderEvents(result) {
    const body = byId('events-body');
    const note = testId('events-note');
    const empty = testId('events-empty');
    body.replaceChildren();
    if (result.status !== 'fulfilled') {
      showLoadFailure(note, empty);
      return;
    }
    const events = result.value.filter((e) => e && typeof e === 'object').sort((a, b) => (Number(b.ts) || 0) - (Number(a.ts) || 0));
    // The page asks for one more than it shows: past that, how many there were is not known.
    note.textContent = events.length > RECENT_EVENTS ? `latest ${RECENT_EVENTS} in the last hour` : `${fmtInt(events.length)} in the last hour`;
    empty.textContent = 'No requests in the last hour.';
    show(empty, events.length === 0);
    for (const e of events.slice(0, RECENT_EVENTS)) {
      const ts = Number(e.ts);
      const cost = (Number(e.costMicros) || 0) / 1e6;
      const status = Number(e.status) || 0;
      body.append(
        el(
          'tr',
          { 'data-testid': 'event-row', 'data-event-id': e.id ?? e.requestId ?? '' },
          cell('event-time', Number.isFinite(ts) ? clockTime(ts, state.timeZone) : '–', 'nowrap', Number.isFinite(ts) ? new Date(ts).toISOString() : undefined),
          cell('event-key', e.keyName || e.keyId || '–', 'truncate', e.keyId ? `${e.keyName || ''} (${e.keyId})`.trim() : 'no key (refused before authentication)'),
          cell('event-model', e.model || '–', 'truncate mono', e.modelAnswered && e.modelAnswered !== e.model ? `answered by ${e.modelAnswered}` : undefined),
          el('td', {}, el('span', { class: statusClass(status), 'data-testid': 'event-status', title: e.errorCode || undefined, text: String(status || '–') })),
          el('td', {}, el('span', { class: e.cache ? `badge badge-cache-${String(e.cache).toLowerCase()}` : 'muted', 'data-testid': 'event-cache', text: e.cache || '–' })),
          cell('event-tokens', fmtInt(e.totalTokens), Number(e.totalTokens) > 0 ? 'num' : 'num zero'),
          cell('event-cost', (e.estimated ? '≈ ' : '') + fmtUsd(cost), cost > 0 ? 'num' : 'num zero', e.estimated ? 'estimated by the gateway (stream cut short)' : undefined),
          cell('event-latency', fmtLatency(e.latencyMs), 'num'),
        ),
      );
    }
  }

  // ---------------------------------------------------------------- wiring

  function selectPeriod(period, reload) {
    if (!Object.hasOwn(PERIODS, period)) return;
    state.period = period;
    for (const button of document.querySelectorAll('[data-period]')) {
      const checked = button.dataset.period === period;
      button.setAttribute('aria-checked', String(checked));
      // A radio group is one Tab stop, its checked radio; the arrow keys move within it.
      button.tabIndex = checked ? 0 : -1;
    }
    history.replaceState(null, '', `#${period}`);
    if (reload) void load();
  }

  /** Arrow keys, Home and End in the period radio group, as in any radio group: select and focus. */
  function onPeriodKey(event) {
    // Alt+Left is the browser's Back, Ctrl+Home its own: only bare keys move in the group.
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const buttons = [...document.querySelectorAll('[data-period]')];
    const at = buttons.findIndex((b) => b.dataset.period === state.period);
    const to = { ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1, Home: 0, End: buttons.length - 1 }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    const next = buttons[(to + buttons.length) % buttons.length];
    next.focus();
    if (next.dataset.period !== state.period) selectPeriod(next.dataset.period, true);
  }

  function start() {
    byId('login-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = byId('token').value.trim();
      const error = byId('login-error');
      if (!token) {
        error.textContent = 'Enter the admin token.';
        show(error, true);
        return;
      }
      if (!TOKEN_CHARS.test(token)) {
        // fetch would throw on such a header: say what is wrong instead of "could not be reached".
        error.textContent = BAD_TOKEN;
        show(error, true);
        return;
      }
      show(error, false);
      setPending(true);
      sessionStorage.setItem(TOKEN_KEY, token);
      void load(true);
    });
    byId('logout').addEventListener('click', () => signOut(''));
    byId('refresh').addEventListener('click', () => void load());
    for (const button of document.querySelectorAll('[data-period]')) {
      button.addEventListener('click', () => selectPeriod(button.dataset.period, true));
    }
    testId('period').addEventListener('keydown', onPeriodKey);
    // A link or a typed address that changes #24h / #7d / #30d changes the view, not just the URL.
    window.addEventListener('hashchange', () => {
      const period = location.hash.slice(1);
      // Reloaded only once signed in: a load in flight from the sign-in form is still checking the token.
      if (Object.hasOwn(PERIODS, period) && period !== state.period) selectPeriod(period, state.signedIn);
    });

    if (window.Chart) {
      const font = getComputedStyle(document.body).fontFamily;
      window.Chart.defaults.font.family = font;
      window.Chart.defaults.font.size = 12;
      window.Chart.defaults.color = '#5c6573';
      window.Chart.defaults.borderColor = '#eceef2';
    }

    const linked = location.hash.slice(1);
    selectPeriod(Object.hasOwn(PERIODS, linked) ? linked : '7d', false);
    if (sessionStorage.getItem(TOKEN_KEY)) {
      show(testId('loading'), true);
      void load(false, true);
    } else {
      signOut('');
    }
  }

  start();
})();
