// window.tilelli: the model in this tab, run by a Web Worker (worker.js) so the page stays
// responsive.
//   tilelli.ready                          Promise of the model's settings, once it is loaded
//   tilelli.complete(prompt, maxTokens)    Promise of the greedy continuation's text
//   tilelli.chat(messages, options)        Promise of {reply, abstained}; messages: [{role, content}]
//                                          ending with the user's; options: temperature, topP,
//                                          maxTokens, seed (the model's defaults otherwise)
// Both take options.onText(textSoFar, byteProbs) (complete: a third argument) to see the text
// stream in byte by byte; UTF-8 is decoded as it arrives, never half a character.
"use strict";
(() => {
  const worker = new Worker("worker.js");
  const pending = new Map();  // id -> {resolve, reject, decoder, text, probs, onText}
  let next = 0;

  worker.onmessage = (e) => {
    const m = e.data, p = pending.get(m.id);
    if (!p) return;
    if (m.bytes) {
      p.text += p.decoder.decode(new Uint8Array(m.bytes), { stream: true });
      p.probs.push(...m.probs);
      if (p.onText) p.onText(p.text, p.probs);
      return;
    }
    pending.delete(m.id);
    if (m.error) { p.reject(new Error(m.error)); return; }
    p.text += p.decoder.decode();
    p.resolve({ ...m, text: p.text, probs: p.probs });
  };

  function request(msg, onText) {
    const id = next++;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject, onText, decoder: new TextDecoder(), text: "", probs: [] });
      worker.postMessage({ ...msg, id });
    });
  }

  const ready = request({ op: "settings" }).then((r) => r.settings);

  window.tilelli = {
    ready,
    async complete(prompt, maxTokens, onText) {
      await ready;
      return (await request({ op: "complete", prompt, maxTokens }, onText)).text;
    },
    async chat(messages, options = {}) {
      const s = await ready;
      const o = { temperature: s.temperature, topP: s.topP, maxTokens: s.maxNewTokens, ...options };
      delete o.onText;
      const r = await request({ op: "chat", messages, options: o }, options.onText);
      return { reply: r.text, abstained: r.abstained, probs: r.probs };
    },
  };
})();
