// The Web Worker that runs the engine (engine.wasm, built from tilelli/web/wasm.c), so the page
// stays responsive while the model computes. It fetches engine-relaxed.wasm (and engine.wasm,
// where the browser lacks relaxed SIMD) and model.tlm from its own
// origin (the only requests it makes), then answers one request at a time:
//   {id, op: "complete", prompt, maxTokens}        greedy continuation
//   {id, op: "chat", messages, options}            a chat reply (template + abstain rule in C)
// with {id, bytes, probs} messages as bytes are produced and a final {id, done, ...}.
"use strict";

let wasm = null;  // the module's exports
const INT8 = false;  // the integer path (ternary layers take int8 inputs); `tilelli export --web` sets it for a ternary model unless --no-int8
const encoder = new TextEncoder();

// WASI imports: the engine writes nothing and reads no files; these exist only to link.
const wasi = { fd_close: () => 0, fd_seek: () => 0, fd_write: () => 0 };

function bytesIn(data) {  // copy bytes into the module's memory: [pointer, length]
  const ptr = wasm.tlw_alloc(BigInt(data.length + 1));
  new Uint8Array(wasm.memory.buffer, ptr, data.length).set(data);
  return [ptr, BigInt(data.length)];
}

function cString(ptr) {
  const mem = new Uint8Array(wasm.memory.buffer);
  let end = ptr;
  while (mem[end]) end++;
  return new TextDecoder().decode(mem.subarray(ptr, end));
}

// The relaxed-SIMD build where the browser accepts it (the same results, faster), else SIMD128 only.
// Not instantiateStreaming: that needs the server to say application/wasm, and any server should do.
async function engineBytes() {
  const relaxed = await fetch("engine-relaxed.wasm").then((r) => r.arrayBuffer());
  return WebAssembly.validate(relaxed) ? relaxed : fetch("engine.wasm").then((r) => r.arrayBuffer());
}

async function load() {
  const [module, model] = await Promise.all([
    engineBytes().then((b) => WebAssembly.instantiate(b, { wasi_snapshot_preview1: wasi })),
    fetch("model.tlm").then((r) => r.arrayBuffer()),
  ]);
  wasm = module.instance.exports;
  wasm._initialize();
  const [ptr, len] = bytesIn(new Uint8Array(model));
  if (wasm.tlw_load(ptr, len)) throw new Error(`model.tlm: ${cString(wasm.tlw_error())}`);
  wasm.tlw_int8(INT8 ? 1 : 0);
  const out = wasm.tlw_alloc(48n);
  wasm.tlw_settings(out);
  const s = new Float64Array(wasm.memory.buffer, out, 6);
  const settings = { chat: !!s[0], hasRule: !!s[1], maxNewTokens: s[2], temperature: s[3], topP: s[4], context: s[5] };
  wasm.tlw_free(out);
  return settings;
}

// Stream the started reply's bytes to the page, a batch per step; returns how many came.
function stream(id) {
  let produced = 0;
  for (;;) {
    const b = wasm.tlw_next();
    if (b === -1) return produced;
    if (b < -1) throw new Error("the engine could not run this step (out of memory?)");
    produced++;
    postMessage({ id, bytes: [b], probs: [wasm.tlw_prob()] });
  }
}

function withText(text, fn) {
  const [ptr, len] = bytesIn(encoder.encode(text));
  try { return fn(ptr, len); } finally { wasm.tlw_free(ptr); }
}

const FAILURES = { 1: "out of memory", 3: "the prompt is longer than the model's context",
                   4: "the message does not fit the model's context with room for a reply" };

function run(msg) {
  if (msg.op === "complete") {
    const code = withText(msg.prompt, (p, n) => wasm.tlw_complete(p, n, BigInt(msg.maxTokens)));
    if (code) throw new Error(FAILURES[code]);
    stream(msg.id);
    return {};
  }
  const turns = msg.messages;  // [{role, content}], the last one the user's
  if (!turns.length || turns[turns.length - 1].role !== "user") throw new Error("the last message must be the user's");
  wasm.tlw_reset();
  for (let i = 0; i + 1 < turns.length - 1; i += 2) {
    if (turns[i].role !== "user" || turns[i + 1].role !== "assistant") throw new Error("messages must alternate user, assistant");
    const code = withText(turns[i].content, (u, un) => withText(turns[i + 1].content, (r, rn) => wasm.tlw_turn(u, un, r, rn)));
    if (code) throw new Error(FAILURES[1]);
  }
  const o = msg.options;
  const seed = o.seed ?? Math.floor(Math.random() * 2 ** 52);
  const code = withText(turns[turns.length - 1].content,
                        (p, n) => wasm.tlw_chat(p, n, BigInt(o.maxTokens), o.temperature, o.topP, seed));
  if (code) throw new Error(FAILURES[code]);
  stream(msg.id);
  return { abstained: !!wasm.tlw_abstained() };
}

const ready = load();
onmessage = async (e) => {
  try {
    const settings = await ready;
    if (e.data.op === "settings") { postMessage({ id: e.data.id, done: true, settings }); return; }
    postMessage({ id: e.data.id, done: true, ...run(e.data) });
  } catch (err) {
    postMessage({ id: e.data.id, done: true, error: String(err.message || err) });
  }
};
