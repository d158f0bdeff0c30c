// The 429s and 400s a client sees from quotas, worded and typed the way the OpenAI SDKs expect.
import { GatewayError } from '../errors.js';
import type { Limits } from '../keys.js';
import type { AdmissionResult, LimitName } from '../store/store.js';
import { periodsAt } from './periods.js';
import { microsToUsd, usdToMicros } from '../openai/prices.js';

const RATE_WORDING: Record<'rpm' | 'tpm' | 'maxConcurrent', string> = {
  rpm: 'requests per minute (RPM)',
  tpm: 'tokens per minute (TPM)',
  maxConcurrent: 'concurrent requests',
};

export type BudgetLimitName = Exclude<LimitName, 'rpm' | 'tpm' | 'maxConcurrent'>;

/**
 * A 429 insufficient_quota: says which budget refused the request, how much of it the request asked for (`wanted`, in
 * the limit's unit: tokens, or dollars), and whether that alone is larger than the whole budget (then the budget is not
 * what blocks the key), for the budget alerts; the message is for people.
 */
export class BudgetRefusal extends GatewayError {
  constructor(
    message: string,
    headers: Record<string, string>,
    readonly limit: BudgetLimitName,
    readonly wanted: number,
    readonly wholeBudget: boolean,
  ) {
    super(429, message, 'insufficient_quota', 'insufficient_quota', null, headers);
  }
}

const BUDGET_WORDING: Record<BudgetLimitName, [string, 'day' | 'month', 'tokens' | 'usd']> = {
  tokensPerDay: ['daily token budget', 'day', 'tokens'],
  tokensPerMonth: ['monthly token budget', 'month', 'tokens'],
  usdPerDay: ['daily spending budget', 'day', 'usd'],
  usdPerMonth: ['monthly spending budget', 'month', 'usd'],
};

interface Context {
  tokens: number;
  usdMicros: number;
  headers: Record<string, string>;
  now: number;
  /** The instant whose day and month the request counts in (its arrival); default `now`. */
  countsAt?: number;
  timeZone: string;
}

/** Sets retry-after (whole seconds, at least 1) and retry-after-ms, which the SDKs honour; returns the seconds. */
function retryAfter(headers: Record<string, string>, ms: number): number {
  const seconds = Math.max(1, Math.ceil(ms / 1000));
  headers['retry-after'] = String(seconds);
  headers['retry-after-ms'] = String(Math.ceil(ms));
  return seconds;
}

/**
 * Rate limits (rpm, tpm, concurrency) are worth retrying: 429 `rate_limit_exceeded` with retry-after.
 * Budgets are not, until the period ends: 429 `insufficient_quota` with x-should-retry: false, which
 * the openai SDKs read to skip their retries; unless only requests in flight hold what is left of
 * one (the store gives a retry hint then): `rate_limit_exceeded` of type `tokens` or `usd`.
 */
export function quotaExceeded(result: Extract<AdmissionResult, { admitted: false }>, limits: Limits, ctx: Context): GatewayError {
  const headers = { ...ctx.headers };
  const limit = result.limit;
  if (limit === 'rpm' || limit === 'tpm' || limit === 'maxConcurrent') {
    const value = limits[limit];
    let message = `Rate limit reached for this gateway key on ${RATE_WORDING[limit]}: limit ${value}.`;
    if (result.retryAfterMs === undefined) {
      // Larger than the limit itself: no amount of waiting lets it through.
      message = `Request too large for this gateway key on ${RATE_WORDING[limit]}: limit ${value}, requested ${ctx.tokens}. Reduce the prompt or max_tokens.`;
      headers['x-should-retry'] = 'false';
    } else {
      message += ` Please try again in ${retryAfter(headers, result.retryAfterMs)}s.`;
    }
    return new GatewayError(429, message, limit === 'tpm' ? 'tokens' : 'requests', 'rate_limit_exceeded', null, headers);
  }
  const [wording, period, unit] = BUDGET_WORDING[limit];
  const value = limits[limit];
  const budget = unit === 'usd' ? `$${value}` : `${value} tokens`;
  const request = unit === 'usd' ? `may cost up to $${microsToUsd(ctx.usdMicros)}` : `may use up to ${ctx.tokens} tokens`;
  if (result.retryAfterMs !== undefined) {
    // What is left of the budget covers the request, but requests in flight hold it (each reserved
    // the most it may use, and gives back what it did not use when it ends): worth retrying soon,
    // so not insufficient_quota, which apps take as "spent until the reset".
    const seconds = retryAfter(headers, result.retryAfterMs);
    const message = `This request ${request}. What is left of this gateway key's ${wording} of ${budget} covers it, but requests in flight hold it until they end. Please try again in ${seconds}s.`;
    return new GatewayError(429, message, unit, 'rate_limit_exceeded', null, headers);
  }
  const p = periodsAt(ctx.countsAt ?? ctx.now, ctx.timeZone);
  const endsAt = period === 'day' ? p.dayEndsAt : p.monthEndsAt;
  const resetsAt = new Date(endsAt).toISOString();
  // The store says only which limit refused the request, not how much of it is spent: the request
  // may be larger than what is left, or than the whole budget (then no reset lets it through).
  const wholeBudget = value !== undefined && (unit === 'usd' ? ctx.usdMicros > usdToMicros(value) : ctx.tokens > value);
  if (!wholeBudget && endsAt <= ctx.now) {
    // It arrived before the period's end and was refused after it (a slow upload): sent again now,
    // it counts in the new period.
    const seconds = retryAfter(headers, 1000);
    const message = `This request ${request}, more than was left of this gateway key's ${wording} of ${budget} when it arrived. It has reset since, at ${resetsAt}. Please try again in ${seconds}s.`;
    return new GatewayError(429, message, unit, 'rate_limit_exceeded', null, headers);
  }
  const message = wholeBudget
    ? `This request ${request}, more than this gateway key's whole ${wording} of ${budget}, so it cannot be served under this budget. Lower max_tokens (or n, or the number of prompts) or the prompt.`
    : `This request ${request}, more than is left of this gateway key's ${wording} of ${budget}. It resets at ${resetsAt}.`;
  headers['x-should-retry'] = 'false';
  return new BudgetRefusal(message, headers, limit, unit === 'usd' ? ctx.usdMicros / 1e6 : ctx.tokens, wholeBudget);
}

/**
 * A request that may use more tokens than the gateway reserves for one request at most
 * (quota.ts MAX_RESERVED_TOKENS): a client error whatever its key's limits, since no model
 * generates that much.
 */
export const requestTooLarge = (tokens: number, max: number, param: string) =>
  new GatewayError(
    400,
    `This request may use up to ${tokens} tokens (its prompt, plus ${param} for each choice it asks for), more than the ${max} the gateway reserves for one request at most. Lower ${param} (or n, or the number of prompts in a batch).`,
    'invalid_request_error',
    'request_too_large',
    param,
  );

export const unpricedModel = (model: string) =>
  new GatewayError(
    400,
    `The gateway has no price for model '${model}', so it cannot be charged against this key's USD budget. Ask your gateway administrator to add it to the price table.`,
    'invalid_request_error',
    'model_price_unknown',
    'model',
  );

/**
 * OpenAI bills the priority tier above the standard prices the gateway knows, so a USD budget would
 * hold such a request at less than it costs.
 */
export const priorityTierNotPriced = () =>
  new GatewayError(
    400,
    "This gateway key has a USD limit, and the gateway's prices are the standard tier's: 'service_tier': 'priority' costs more than it could hold against the budget. Send the request without it (or with 'auto', 'default' or 'flex'), or ask your gateway administrator for a key without USD limits.",
    'invalid_request_error',
    'service_tier_not_priced',
    'service_tier',
  );

/**
 * OpenAI bills hosted tools per call on top of tokens (web search per search, file search per
 * call, code interpreter per container, image generation in image tokens the usage does not
 * report); the gateway prices tokens only, so a key with a USD limit could spend far past it.
 */
export const hostedToolNotPriced = (type: string) =>
  new GatewayError(
    400,
    `This gateway key has a USD limit, and the '${type.slice(0, 60)}' tool is billed by OpenAI per call on top of tokens, which the gateway cannot price: it could not hold such a request to the budget. Send the request without hosted tools (function tools are fine), or ask your gateway administrator for a key without USD limits.`,
    'invalid_request_error',
    'hosted_tool_not_priced',
    'tools',
  );

/**
 * A Responses request in a conversation (the Conversations API, which the gateway does not route)
 * sends that conversation's items again as input: the gateway cannot see how many tokens they hold,
 * so it could not reserve them against a token or USD limit.
 */
export const conversationNotMetered = () =>
  new GatewayError(
    400,
    "This gateway key has a token or USD limit, and a 'conversation' carries input the gateway cannot count, so it could not hold it to the limit. Continue with 'previous_response_id' instead (its size is known), or ask your gateway administrator for a key without token or USD limits.",
    'invalid_request_error',
    'conversation_not_metered',
    'conversation',
  );

/**
 * A background response's usage never passes through the gateway (OpenAI bills it when it finishes,
 * after the create call was answered), so nothing could hold it against a token or USD limit.
 */
export const backgroundNotMetered = () =>
  new GatewayError(
    400,
    "This gateway key has a token or USD limit, which background responses would bypass: the gateway never sees their usage. Send the request without 'background' (stream it for long runs), or ask your gateway administrator for a key without token or USD limits.",
    'invalid_request_error',
    'background_not_metered',
    'background',
  );
