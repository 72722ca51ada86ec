// Drives `serve` with the official openai npm client: every sampling/output parameter of issue #14, stream and
// non-stream, on /v1/completions and /v1/chat/completions. Checks what the client alone can check (stream equals
// non-stream, n choices equal separately seeded requests, finish reasons and lengths, 400s naming the field, tool
// calling accepted) and writes every response to --out so the C# test (OpenAiClientTests) checks the logprobs against
// the engine's own logits.
//
// usage: node openai.test.mjs --url http://127.0.0.1:PORT --model tiny-maverick --out results.json --default-max-tokens N
import OpenAI from 'openai';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const base = args.url;
const model = args.model;
const defaultMaxTokens = Number(args['default-max-tokens']);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'not-needed', maxRetries: 0, timeout: 120_000 });
const results = { cases: [] };
let failures = 0;

function check(name, fn) {
  try {
    fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

// One aggregated view of a response, streamed or not: per choice its text, token ids, logprobs, finish, tool calls.
function emptyChoice(index) {
  return { index, text: '', token_ids: [], logprobs: [], finish_reason: null, tool_calls: [] };
}

function logprobEntriesChat(lp) {
  return (lp?.content ?? []).map((e) => ({ token: e.token, logprob: e.logprob, top: e.top_logprobs.map((t) => t.logprob) }));
}

function logprobEntriesCompletion(lp) {
  if (!lp) return [];
  // A JS object lists integer-like keys (tokens such as "12") first: order the values again, most likely first.
  return lp.tokens.map((t, i) => ({ token: t, logprob: lp.token_logprobs[i], top: Object.values(lp.top_logprobs[i]).sort((a, b) => b - a) }));
}

async function run(kind, request, stream) {
  const body = { model, return_token_ids: true, ...request, stream };
  const api = kind === 'chat' ? client.chat.completions : client.completions;
  const view = { choices: [], prompt_token_ids: null, usage: null };
  const choice = (i) => (view.choices[i] ??= emptyChoice(i));
  if (!stream) {
    const r = await api.create(body);
    for (const c of r.choices) {
      const v = choice(c.index);
      v.text = kind === 'chat' ? c.message.content ?? '' : c.text;
      v.token_ids = c.token_ids;
      v.logprobs = kind === 'chat' ? logprobEntriesChat(c.logprobs) : logprobEntriesCompletion(c.logprobs);
      v.finish_reason = c.finish_reason;
      v.tool_calls = kind === 'chat' ? c.message.tool_calls ?? [] : [];
      view.prompt_token_ids = c.prompt_token_ids;
    }
    view.usage = r.usage;
    return view;
  }
  const s = await api.create({ ...body, stream_options: { include_usage: true } });
  for await (const chunk of s) {
    if (chunk.usage) view.usage = chunk.usage;
    for (const c of chunk.choices) {
      const v = choice(c.index);
      if (c.prompt_token_ids) view.prompt_token_ids = c.prompt_token_ids;
      v.token_ids.push(...(c.token_ids ?? []));
      if (kind === 'chat') {
        v.text += c.delta?.content ?? '';
        v.logprobs.push(...logprobEntriesChat(c.logprobs));
        for (const t of c.delta?.tool_calls ?? []) v.tool_calls.push(t);
      } else {
        v.text += c.text ?? '';
        v.logprobs.push(...logprobEntriesCompletion(c.logprobs));
      }
      if (c.finish_reason) v.finish_reason = c.finish_reason;
    }
  }
  return view;
}

// Runs a request both ways, records both, checks they agree.
async function both(name, kind, request) {
  const plain = await run(kind, request, false);
  const streamed = await run(kind, request, true);
  results.cases.push({ name, kind, stream: false, request, response: plain });
  results.cases.push({ name, kind, stream: true, request, response: streamed });
  check(`${name}: stream and non-stream give the same choices`, () => {
    assert.equal(streamed.choices.length, plain.choices.length);
    for (let i = 0; i < plain.choices.length; i++) {
      assert.deepEqual(streamed.choices[i].token_ids, plain.choices[i].token_ids);
      assert.equal(streamed.choices[i].text, plain.choices[i].text);
      assert.equal(streamed.choices[i].finish_reason, plain.choices[i].finish_reason);
      assert.deepEqual(streamed.choices[i].logprobs.map((e) => e.logprob), plain.choices[i].logprobs.map((e) => e.logprob));
    }
    assert.deepEqual(streamed.usage, plain.usage);
  });
  return plain;
}

async function expect400(name, kind, request, param) {
  const api = kind === 'chat' ? client.chat.completions : client.completions;
  let error = null;
  try {
    await api.create({ model, ...request });
  } catch (e) {
    error = e;
  }
  check(`${name}: 400 naming '${param}'`, () => {
    assert.ok(error instanceof OpenAI.BadRequestError, `expected a BadRequestError, got ${error}`);
    assert.equal(error.status, 400);
    assert.equal(error.param, param);
    assert.equal(error.type, 'invalid_request_error');
  });
}

const prompt = [500, 17, 23, 99, 17, 301, 5, 23, 42, 42, 7];
const messages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Name three colours.' },
];

// logprobs / top_logprobs with temperature, penalties and bias (checked against the engine by the C# side).
await both('completion logprobs', 'completion', { prompt, max_tokens: 12, temperature: 0.8, seed: 11, logprobs: 5 });
await both('chat logprobs penalties bias', 'chat', {
  messages, max_tokens: 12, temperature: 0.9, seed: 5, logprobs: true, top_logprobs: 3,
  presence_penalty: 0.6, frequency_penalty: 0.4, repetition_penalty: 1.2, logit_bias: { 17: 4, 42: -100, 300: 2.5 },
});
await both('completion greedy bias', 'completion', { prompt, max_tokens: 8, temperature: 0, logit_bias: { 65: 6 }, logprobs: 2 });
await both('completion negative penalties', 'completion', {
  prompt, max_tokens: 10, temperature: 1.2, seed: 99, logprobs: 4, presence_penalty: -0.5, frequency_penalty: 1.5, repetition_penalty: 0.7,
});

// n choices share the prompt and equal n separately seeded requests (choice i = seed + i).
const n3 = await both('completion n=3', 'completion', { prompt, max_tokens: 10, temperature: 1.0, seed: 21, n: 3, logprobs: 1 });
const nChat = await both('chat n=2', 'chat', { messages, max_tokens: 10, temperature: 0.7, seed: 31, n: 2, logprobs: true, top_logprobs: 2 });
for (let i = 0; i < 3; i++) {
  const single = await run('completion', { prompt, max_tokens: 10, temperature: 1.0, seed: 21 + i, logprobs: 1 }, false);
  results.cases.push({ name: `completion seed ${21 + i}`, kind: 'completion', stream: false, request: { prompt, max_tokens: 10, temperature: 1.0, seed: 21 + i, logprobs: 1 }, response: single });
  check(`n=3 choice ${i} equals the request with seed ${21 + i}`, () => {
    assert.deepEqual(n3.choices[i].token_ids, single.choices[0].token_ids);
    assert.deepEqual(n3.choices[i].logprobs.map((e) => e.logprob), single.choices[0].logprobs.map((e) => e.logprob));
  });
}
for (let i = 0; i < 2; i++) {
  const single = await run('chat', { messages, max_tokens: 10, temperature: 0.7, seed: 31 + i }, false);
  check(`chat n=2 choice ${i} equals the request with seed ${31 + i}`, () => assert.deepEqual(nChat.choices[i].token_ids, single.choices[0].token_ids));
}
check('n=3 gives different samples', () => assert.ok(new Set(n3.choices.map((c) => c.token_ids.join(','))).size > 1));

// min_tokens (stop ids masked before it), ignore_eos, stop_token_ids, default max_tokens.
await both('completion min_tokens', 'completion', { prompt, max_tokens: 8, min_tokens: 6, temperature: 0, logprobs: 3 });
const ignore = await both('chat ignore_eos', 'chat', { messages, max_tokens: 20, temperature: 0, ignore_eos: true });
check('ignore_eos: all 20 tokens, finish length', () => {
  assert.equal(ignore.choices[0].token_ids.length, 20);
  assert.equal(ignore.choices[0].finish_reason, 'length');
});
const greedy = await run('completion', { prompt, max_tokens: 12, temperature: 0, ignore_eos: true }, false);
const stopAt = greedy.choices[0].token_ids[3];
const stopped = await both('completion stop_token_ids', 'completion', { prompt, max_tokens: 12, temperature: 0, ignore_eos: true, stop_token_ids: [stopAt] });
check('stop_token_ids: ends at the first occurrence, finish stop', () => {
  const first = greedy.choices[0].token_ids.indexOf(stopAt);
  assert.deepEqual(stopped.choices[0].token_ids, greedy.choices[0].token_ids.slice(0, first + 1));
  assert.equal(stopped.choices[0].finish_reason, 'stop');
});
const defaulted = await both('chat default max_tokens', 'chat', { messages, temperature: 0, ignore_eos: true });
check(`no max_tokens: the server default (${defaultMaxTokens})`, () => {
  assert.equal(defaulted.choices[0].token_ids.length, defaultMaxTokens);
  assert.equal(defaulted.usage.completion_tokens, defaultMaxTokens);
});
const seeded = await both('chat seed', 'chat', { messages, max_tokens: 10, temperature: 1.0, seed: 1234, top_p: 0.9, top_k: 40 });
const seededAgain = await run('chat', { messages, max_tokens: 10, temperature: 1.0, seed: 1234, top_p: 0.9, top_k: 40 }, false);
check('seed: the same request twice gives the same tokens', () => assert.deepEqual(seededAgain.choices[0].token_ids, seeded.choices[0].token_ids));

// Tool calling: tools rendered, assistant tool_calls and tool results accepted, stream and not.
const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Current weather', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
const toolMessages = [
  { role: 'user', content: 'Weather in Paris?' },
  { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
  { role: 'tool', tool_call_id: 'call_1', content: '18 C, sunny' },
];
const withTools = await both('chat tools', 'chat', { messages: toolMessages, tools, tool_choice: 'auto', max_tokens: 8, temperature: 0 });
check('tools: a complete answer (content or tool_calls)', () => {
  const c = withTools.choices[0];
  assert.ok(['stop', 'length', 'tool_calls'].includes(c.finish_reason));
  assert.ok(c.finish_reason === 'tool_calls' ? c.tool_calls.length > 0 : typeof c.text === 'string');
});

// response_format: JSON-constrained decoding is not implemented, so it is refused; validation names every bad field.
await expect400('response_format json_object', 'chat', { messages, response_format: { type: 'json_object' } }, 'response_format');
await expect400('tool_choice required', 'chat', { messages, tools, tool_choice: 'required' }, 'tool_choice');
await expect400('presence_penalty out of range', 'completion', { prompt, presence_penalty: 2.5 }, 'presence_penalty');
await expect400('frequency_penalty out of range', 'chat', { messages, frequency_penalty: -3 }, 'frequency_penalty');
await expect400('repetition_penalty zero', 'completion', { prompt, repetition_penalty: 0 }, 'repetition_penalty');
await expect400('logit_bias token outside the vocabulary', 'completion', { prompt, logit_bias: { 100000: 1 } }, 'logit_bias.100000');
await expect400('logit_bias value out of range', 'chat', { messages, logit_bias: { 5: 200 } }, 'logit_bias.5');
await expect400('n zero', 'completion', { prompt, n: 0 }, 'n');
await expect400('logprobs too many', 'completion', { prompt, logprobs: 21 }, 'logprobs');
await expect400('top_logprobs without logprobs', 'chat', { messages, top_logprobs: 2 }, 'top_logprobs');
await expect400('min_tokens over max_tokens', 'chat', { messages, max_tokens: 3, min_tokens: 4 }, 'min_tokens');
await expect400('stop_token_ids outside the vocabulary', 'completion', { prompt, stop_token_ids: [9999] }, 'stop_token_ids[0]');
await expect400('ignore_eos not a boolean', 'completion', { prompt, ignore_eos: 'yes' }, 'ignore_eos');
await expect400('seed not an integer', 'chat', { messages, seed: 1.5 }, 'seed');

// /tokenize and /detokenize (not part of the OpenAI client; vLLM's endpoints).
const post = async (path, body) => {
  const r = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
};
const text = 'Hello tokenizer';
const tok = await post('/tokenize', { model, prompt: text, return_token_strs: true });
const viaCompletion = await run('completion', { prompt: text, max_tokens: 1, temperature: 0 }, false);
const detok = await post('/detokenize', { model, tokens: tok.body.tokens });
check('/tokenize equals the completion prompt ids, /detokenize round-trips', () => {
  assert.equal(tok.status, 200);
  assert.deepEqual(tok.body.tokens, viaCompletion.prompt_token_ids);
  assert.equal(tok.body.count, tok.body.tokens.length);
  assert.equal(tok.body.token_strs.length, tok.body.tokens.length);
  assert.equal(detok.status, 200);
  assert.equal(detok.body.prompt, `<|begin_of_text|>${text}`);
});
const chatTok = await post('/tokenize', { model, messages });
const viaChat = await run('chat', { messages, max_tokens: 1, temperature: 0 }, false);
check('/tokenize of messages equals the chat prompt ids', () => assert.deepEqual(chatTok.body.tokens, viaChat.prompt_token_ids));
const badTok = await post('/detokenize', { tokens: [1, 999999] });
check('/detokenize validates ids', () => {
  assert.equal(badTok.status, 400);
  assert.equal(badTok.body.error.param, 'tokens[1]');
});

writeFileSync(args.out, JSON.stringify(results));
console.log(`${results.cases.length} responses written to ${args.out}; ${failures} failed checks`);
process.exit(failures === 0 ? 0 : 1);
