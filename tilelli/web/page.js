// The in-tab chat page's own script (`tilelli export --web` puts it in the `tilelli serve` page
// in place of that page's API client): window.tilelli (tilelli.js) runs the model in a Web
// Worker. A chat model chats (its template and abstain rule); a base model continues the text.
const turns = [];  // [{role, content}] of finished turns
let settings = null, busy = false;

// Show `text` with each character shaded by the probability of its last byte.
function render(body, text, probs) {
  const chars = Array.from(text), last = [];
  let at = 0;
  for (const ch of chars) { at += new TextEncoder().encode(ch).length; last.push(probs[at - 1]); }
  body.replaceChildren();
  appendChars(body, chars, last);
}

async function send(text) {
  addMessage("user", text);
  const div = addMessage("assistant", "");
  const body = div.querySelector(".body");
  div.dataset.state = "streaming";
  body.classList.add("cursor");
  busy = true;
  $("send").disabled = true;
  const onText = (t, probs) => { render(body, t, probs); div.scrollIntoView({ block: "end" }); };
  const maxTokens = Number($("max-tokens").value);
  try {
    if (settings.chat) {
      const messages = [...turns, { role: "user", content: text }];
      const r = await tilelli.chat(messages, { temperature: Number($("temperature").value), maxTokens, onText });
      turns.push(messages[messages.length - 1], { role: "assistant", content: r.reply });
      if (r.abstained) markAbstained(div);
    } else {
      await tilelli.complete(text, maxTokens, onText);
    }
    div.dataset.state = "done";
  } catch (e) {
    div.classList.add("error");
    div.dataset.state = "error";
    body.append(document.createTextNode("\nerror: " + e.message));
  } finally {
    body.classList.remove("cursor");
    busy = false;
    $("send").disabled = false;
    $("input").focus();
  }
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value;
  if (!text.trim() || busy || !settings) return;
  $("input").value = "";
  send(text);
});
$("new-chat").addEventListener("click", () => {
  turns.length = 0;
  clearMessages();
});
$("stop").hidden = true;  // a reply in the tab runs to its end
setStatus("loading the model…", "loading");
tilelli.ready.then((s) => {
  settings = s;
  $("temperature").value = s.chat ? s.temperature : 0;
  $("max-tokens").value = s.chat ? s.maxNewTokens : 256;
  if (!s.chat) $("input").placeholder = "Text for the model to continue (Enter sends)";
  setStatus(`${s.chat ? "chat" : "text"} model in this tab · ${s.context} bytes of context`, "ready");
}, (e) => setStatus(`the model failed to load: ${e.message}`, "down"));
