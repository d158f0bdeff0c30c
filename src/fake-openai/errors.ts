// OpenAI-shaped error bodies, copied from what the real API answers, so gateway error paths see the real thing.

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export function errorBody(
  message: string,
  type = 'invalid_request_error',
  param: string | null = null,
  code: string | null = null,
): OpenAIErrorBody {
  return { error: { message, type, param, code } };
}

/** Thrown by endpoint handlers; the server turns it into the response. */
export class FakeHttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: OpenAIErrorBody,
  ) {
    super(body.error.message);
  }
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new FakeHttpError(400, errorBody(message, 'invalid_request_error', param, code));

export const missingParam = (param: string) =>
  badRequest(`Missing required parameter: '${param}'.`, param, 'missing_required_parameter');

export const modelNotFound = (model: string) =>
  new FakeHttpError(
    404,
    errorBody(`The model '${model}' does not exist`, 'invalid_request_error', 'model', 'model_not_found'),
  );

export const invalidUrl = (method: string, path: string) =>
  new FakeHttpError(404, errorBody(`Invalid URL (${method} ${path})`));

export const malformedJson = () =>
  badRequest(
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
  );

export function unauthorized(authorization: string | undefined): FakeHttpError {
  if (!authorization) {
    return new FakeHttpError(
      401,
      errorBody(
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username. You can obtain an API key from https://platform.openai.com/account/api-keys.",
      ),
    );
  }
  // OpenAI masks the key it echoes back; so do we, so logs in tests never show a full secret.
  const key = authorization.replace(/^Bearer\s+/i, '');
  const masked = key.length > 8 ? `${key.slice(0, 3)}*********${key.slice(-4)}` : '*********';
  return new FakeHttpError(
    401,
    errorBody(
      `Incorrect API key provided: ${masked}. You can find your API key at https://platform.openai.com/account/api-keys.`,
      'invalid_request_error',
      null,
      'invalid_api_key',
    ),
  );
}

/** Default body for failNext(): the error OpenAI typically sends with that status. */
export function defaultErrorFor(status: number): OpenAIErrorBody {
  switch (status) {
    case 400:
      return errorBody('Invalid request (injected by fake-openai).');
    case 401:
      return unauthorized('Bearer sk-injected-failure').body;
    case 403:
      return errorBody('You are not allowed to sample from this model', 'invalid_request_error', null, 'model_not_allowed');
    case 404:
      return modelNotFound('injected-failure').body;
    case 429:
      return errorBody(
        'Rate limit reached for requests in organization fake-org on requests per min (RPM): Limit 10000, Used 10000, Requested 1. Please try again in 6ms. Visit https://platform.openai.com/account/rate-limits to learn more.',
        'requests',
        null,
        'rate_limit_exceeded',
      );
    case 503:
      return errorBody('The engine is currently overloaded, please try again later.', 'server_error');
    default:
      return status >= 500
        ? errorBody('The server had an error while processing your request. Sorry about that!', 'server_error')
        : errorBody(`Request failed with status ${status} (injected by fake-openai).`);
  }
}
