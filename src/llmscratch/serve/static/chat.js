// The chat page: sends the conversation to /v1/chat/completions with stream: true and shows the reply as the
// server-sent events arrive. Stop aborts the request (the server frees the model's row at its next step).
"use strict";

const $ = (id) => document.getElementById(id);
const messages = [];  // the conversation: {role, content}
let controller = null;  // the AbortController of the reply being streamed

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value || localStorage.getItem("llmscratch-api-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

async function loadModel() {
  let response;
  try {
    response = await fetch("v1/models", { headers: headers() });  // relative: works behind a path prefix too
  } catch (e) {  // the server is not reachable (yet): try again
    $("model").textContent = "(server unreachable, retrying…)";
    setTimeout(loadModel, 2000);
    return;
  }
  if (response.status === 401) {
    $("key-label").hidden = false;
    $("model").textContent = "(API key needed)";
    return;
  }
  if (response.status === 503) {  // still loading
    $("model").textContent = "loading…";
    setTimeout(loadModel, 2000);
    return;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok || !body || !Array.isArray(body.data) || !body.data.length) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    $("model").textContent = `(error: ${message})`;
    return;
  }
  $("model").textContent = body.data[0].id;
  const context = body.data[0].context_length;
  $("max-tokens").max = context;
  if (Number($("max-tokens").value) > context / 2) $("max-tokens").value = Math.floor(context / 2);  // room for the prompt
}

// Yields the JSON of each `data:` event of a server-sent event stream; stops at [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  messages.push({ role: "user", content: text });
  addMessage("user", text);
  const div = addMessage("assistant", "");
  div.classList.add("streaming");
  setBusy(true);
  $("status").textContent = "generating…";
  controller = new AbortController();
  let reply = "", finish = null, failed = false;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: $("model").textContent, messages, stream: true,
        temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value),
      }),
    });
    if (!response.ok) {
      if (response.status === 401) $("key-label").hidden = false;
      throw new Error(await errorText(response));
    }
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.delta.content) {
        reply += choice.delta.content;
        div.textContent = reply;
        div.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    $("status").textContent = finish === "length" ? "stopped: max tokens reached" : "done";
  } catch (e) {
    if (e.name === "AbortError") {
      $("status").textContent = "stopped";
    } else {
      failed = true;
      addMessage("error", "error: " + e.message);
      $("status").textContent = "error";
    }
  } finally {
    div.classList.remove("streaming");
    if (failed && !reply) {
      messages.pop();  // the question got no answer: send it again with the next message
      div.remove();
    } else {
      messages.push({ role: "assistant", content: reply });
    }
    controller = null;
    setBusy(false);
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("form").requestSubmit();
  }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("clear").addEventListener("click", () => {
  messages.length = 0;
  $("log").textContent = "";
  $("status").textContent = "";
});
$("api-key").addEventListener("change", () => {
  localStorage.setItem("llmscratch-api-key", $("api-key").value);
  loadModel();
});
loadModel();
