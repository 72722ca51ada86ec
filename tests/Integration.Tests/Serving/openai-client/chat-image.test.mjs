// Sends a PNG as a data URL through `serve` with the official openai client (chat.completions, stream: true) and
// checks the streamed answer. Run by tests/Integration.Tests/Vision/OpenAiClientImageTests.cs:
//   node chat-image.test.mjs --url http://127.0.0.1:PORT --model ID --image FILE.png
// Prints one JSON line with what it saw, and exits 0 only when the stream carried text, a finish reason and usage.
import { readFileSync } from "node:fs";
import OpenAI from "openai";

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));
for (const required of ["url", "model", "image"]) {
  if (!args[required]) {
    console.error(`missing --${required}`);
    process.exit(2);
  }
}

const client = new OpenAI({ baseURL: `${args.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 120_000 });
const dataUrl = `data:image/png;base64,${readFileSync(args.image).toString("base64")}`;

const stream = await client.chat.completions.create({
  model: args.model,
  stream: true,
  stream_options: { include_usage: true },
  temperature: 0,
  max_tokens: 6,
  messages: [
    {
      role: "user",
      content: [
        { type: "text", text: "What is in this picture?" },
        { type: "image_url", image_url: { url: dataUrl, detail: "auto" } },
      ],
    },
  ],
});

let text = "";
let chunks = 0;
let finish = null;
let usage = null;
for await (const chunk of stream) {
  chunks++;
  for (const choice of chunk.choices) {
    text += choice.delta?.content ?? "";
    finish = choice.finish_reason ?? finish;
  }
  usage = chunk.usage ?? usage;
}

// A text-only request to compare the prompt size with.
const plain = await client.chat.completions.create({
  model: args.model,
  temperature: 0,
  max_tokens: 1,
  messages: [{ role: "user", content: [{ type: "text", text: "What is in this picture?" }] }],
});

// An image the server cannot use: the client surfaces the server's 400 with the part named.
let rejected = null;
try {
  await client.chat.completions.create({
    model: args.model,
    max_tokens: 1,
    messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } }] }],
  });
} catch (e) {
  rejected = { status: e.status, param: e.param ?? e.error?.param ?? null, message: e.message };
}

const report = { chunks, text, finish, usage, plainPromptTokens: plain.usage?.prompt_tokens ?? null, rejected };
console.log(JSON.stringify(report));
const ok = chunks > 1 && finish !== null && usage !== null && usage.completion_tokens > 0
  && usage.prompt_tokens > report.plainPromptTokens && rejected?.status === 400 && rejected.param === "messages[0].content[0]";
process.exit(ok ? 0 : 1);
