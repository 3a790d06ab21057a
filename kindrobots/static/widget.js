/*! Kind Robots chat widget. Plain ES2017, no dependencies, no build step.
 *
 * <script src="https://api.example.com/widget.js" data-project-key="pk_..."
 *         data-title="Help" data-token="<end-user JWT>" async></script>
 *
 * Speaks graphql-transport-ws to the /graphql endpoint beside this script.
 * Model output is untrusted: it is only ever written with textContent.
 * The page can steer it through window.KindRobotsChat: open(), close(), setToken(jwt).
 */
(function () {
  "use strict";

  const P = "kr-chat-"; // class prefix: every selector below is scoped by it
  const PROTOCOL = "graphql-transport-ws";
  const MAX_CHARS = 8000;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  const NOT_ALLOWED = "This site is not allowed to use this chat.";
  const SIGN_IN = "Please sign in to use this chat.";
  const CHAT = "subscription KindRobotsChat($input: ChatInput!) { chat(input: $input) { " +
    "__typename ... on ChatStarted { conversationId } ... on ChatDelta { text } " +
    "... on ChatToolCall { name } ... on ChatError { message retryAfter } } }";

  const script = document.currentScript ||
    document.querySelector("script[data-project-key][src*='widget.js']");
  if (!script || !script.src) return;
  const projectKey = script.getAttribute("data-project-key") || "";
  if (!/^pk_[A-Za-z0-9_-]{1,64}$/.test(projectKey)) {
    console.warn("Kind Robots widget: data-project-key is missing or malformed.");
    return;
  }
  const title = script.getAttribute("data-title") || "Chat";
  let token = script.getAttribute("data-token") || null;
  const endpoint = new URL("/graphql", script.src);
  endpoint.protocol = endpoint.protocol === "https:" ? "wss:" : "ws:";

  const CSS = `
.${P}root{position:fixed;right:20px;bottom:20px;z-index:2147483000;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2330}
.${P}root *{box-sizing:border-box}
.${P}launcher{width:56px;height:56px;border:0;border-radius:50%;background:#3b5bdb;color:#fff;font-size:24px;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25)}
.${P}panel{position:absolute;right:0;bottom:68px;width:min(360px,calc(100vw - 40px));height:min(520px,calc(100vh - 110px));display:flex;flex-direction:column;background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);overflow:hidden}
.${P}panel[hidden]{display:none}
.${P}header{display:flex;align-items:center;justify-content:space-between;padding:10px 14px;background:#3b5bdb;color:#fff;font-weight:600}
.${P}close{border:0;background:transparent;color:#fff;font-size:20px;cursor:pointer;line-height:1}
.${P}messages{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px}
.${P}msg{max-width:85%;padding:8px 11px;border-radius:10px;white-space:pre-wrap;overflow-wrap:anywhere}
.${P}user{align-self:flex-end;background:#3b5bdb;color:#fff}
.${P}assistant{align-self:flex-start;background:#f1f3f5}
.${P}assistant.${P}busy:empty::after{content:"\\2026"}
.${P}tool{align-self:flex-start;font-size:12px;color:#666;font-style:italic}
.${P}error{align-self:stretch;font-size:13px;color:#c92a2a}
.${P}status{padding:6px 12px;font-size:13px;background:#fff4e6;color:#a61e4d}
.${P}status:empty{display:none}
.${P}form{display:flex;gap:6px;padding:10px;border-top:1px solid #e9ecef}
.${P}input{flex:1;min-width:0;padding:8px 10px;border:1px solid #ced4da;border-radius:8px;font:inherit;color:inherit;background:#fff}
.${P}send{padding:8px 12px;border:0;border-radius:8px;background:#3b5bdb;color:#fff;font:inherit;cursor:pointer}
.${P}send:disabled,.${P}input:disabled{opacity:.5;cursor:not-allowed}`;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls.split(" ").map((c) => P + c).join(" ");
    if (text) node.textContent = text;
    return node;
  }

  // ---- the panel -----------------------------------------------------------

  const ui = {};

  function mount() {
    if (!document.getElementById(P + "style")) {
      const style = document.createElement("style");
      style.id = P + "style";
      style.textContent = CSS;
      document.head.appendChild(style);
    }
    ui.root = el("div", "root");
    ui.launcher = el("button", "launcher", "\u{1F4AC}");
    ui.launcher.type = "button";
    ui.launcher.setAttribute("aria-label", "Open chat: " + title);
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.panel = el("div", "panel");
    ui.panel.hidden = true;
    ui.panel.setAttribute("role", "dialog");
    ui.panel.setAttribute("aria-label", title);
    const header = el("div", "header");
    header.appendChild(el("span", "title", title));
    const close = el("button", "close", "\u00d7");
    close.type = "button";
    close.setAttribute("aria-label", "Close chat");
    header.appendChild(close);
    ui.messages = el("div", "messages");
    ui.messages.setAttribute("role", "log");
    ui.messages.setAttribute("aria-live", "polite");
    ui.status = el("div", "status");
    ui.status.setAttribute("role", "status");
    ui.form = el("form", "form");
    ui.input = el("input", "input");
    ui.input.type = "text";
    ui.input.maxLength = MAX_CHARS;
    ui.input.placeholder = "Type a message\u2026";
    ui.input.setAttribute("aria-label", "Message");
    ui.send = el("button", "send", "Send");
    ui.send.type = "submit";
    ui.form.appendChild(ui.input);
    ui.form.appendChild(ui.send);
    ui.panel.appendChild(header);
    ui.panel.appendChild(ui.messages);
    ui.panel.appendChild(ui.status);
    ui.panel.appendChild(ui.form);
    ui.root.appendChild(ui.panel);
    ui.root.appendChild(ui.launcher);
    document.body.appendChild(ui.root);

    ui.launcher.addEventListener("click", () => (ui.panel.hidden ? open() : hide()));
    close.addEventListener("click", hide);
    ui.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") hide();
    });
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
  }

  function open() {
    ui.panel.hidden = false;
    ui.launcher.setAttribute("aria-expanded", "true");
    ui.input.focus();
    connect(); // lazily: a page view that never opens the chat costs the server nothing
  }

  function hide() {
    ui.panel.hidden = true;
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.focus();
  }

  function append(node) {
    const atBottom =
      ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 40;
    ui.messages.appendChild(node);
    if (atBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
    return node;
  }

  function setStatus(text) {
    ui.status.textContent = text || "";
  }

  function refreshControls() {
    const blocked = fatal !== null;
    ui.input.disabled = blocked;
    ui.send.disabled = blocked || turn !== null;
  }

  // ---- one exchange: a user message and the streamed reply ------------------

  let conversationId = null;
  let turn = null; // {bubble, text, tool, id}

  function submit() {
    const message = ui.input.value.trim();
    if (!message || turn || fatal) return;
    ui.input.value = "";
    append(el("div", "msg user", message));
    const bubble = append(el("div", "msg assistant busy"));
    const text = document.createTextNode("");
    bubble.appendChild(text);
    turn = { bubble: bubble, text: text, tool: null, id: null };
    refreshControls();
    subscribe(turn, { message: message, conversationId: conversationId });
  }

  function onEvent(current, event) {
    if (current.tool && event.__typename !== "ChatToolCall") {
      current.tool.remove();
      current.tool = null;
    }
    switch (event.__typename) {
      case "ChatStarted":
        conversationId = event.conversationId;
        break;
      case "ChatDelta":
        current.text.appendData(event.text);
        if (ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80) {
          ui.messages.scrollTop = ui.messages.scrollHeight;
        }
        break;
      case "ChatToolCall":
        if (current.tool) current.tool.remove();
        current.tool = el("div", "tool", "Using " + event.name + "\u2026");
        ui.messages.insertBefore(current.tool, current.bubble);
        break;
      case "ChatError":
        showError(current, event.retryAfter
          ? event.message + " Try again in " + event.retryAfter + " s."
          : event.message);
        break;
      default: // ChatCompleted, and anything newer this widget does not know
        break;
    }
  }

  function showError(current, message) {
    append(el("div", "error", message || "Something went wrong."));
    if (current && current.bubble) current.bubble.classList.remove(P + "busy");
  }

  function finish(current) {
    if (turn !== current) return;
    if (current.tool) current.tool.remove();
    current.bubble.classList.remove(P + "busy");
    if (!current.text.data) current.bubble.remove();
    turn = null;
    refreshControls();
  }

  function graphqlError(current, errors) {
    const first = (errors && errors[0]) || {};
    const code = first.extensions && first.extensions.code;
    if (code === "NOT_FOUND") conversationId = null; // the conversation is gone: start anew
    if (code === "RATE_LIMITED" && first.extensions.retryAfter) {
      showError(current, "Too many messages. Try again in " + first.extensions.retryAfter + " s.");
    } else {
      showError(current, first.message);
    }
  }

  // ---- graphql-transport-ws ------------------------------------------------

  let socket = null;
  let acked = false;
  let fatal = null; // the reason this page may not chat (4401/4403); no reconnects then
  let attempt = 0;
  let retryTimer = null;
  let seq = 0;
  const queued = []; // {frame, turn}: subscriptions waiting for connection_ack
  const active = new Map(); // subscription id -> turn, for subscriptions sent

  function send(frame) {
    socket.send(JSON.stringify(frame));
  }

  function connect() {
    if (socket || fatal || retryTimer) return;
    acked = false;
    const ws = new WebSocket(endpoint.href, PROTOCOL);
    socket = ws;
    ws.onopen = () => {
      const payload = { projectKey: projectKey };
      if (token) payload.token = token;
      send({ type: "connection_init", payload: payload });
    };
    ws.onmessage = (message) => {
      if (ws !== socket) return;
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      const current = active.get(frame.id);
      switch (frame.type) {
        case "connection_ack":
          acked = true;
          attempt = 0;
          setStatus("");
          while (queued.length) {
            const item = queued.shift();
            active.set(item.frame.id, item.turn);
            send(item.frame);
          }
          break;
        case "ping":
          send({ type: "pong" });
          break;
        case "next":
          if (!current) break;
          if (frame.payload.errors) graphqlError(current, frame.payload.errors);
          if (frame.payload.data && frame.payload.data.chat) onEvent(current, frame.payload.data.chat);
          break;
        case "error":
          if (!current) break;
          active.delete(frame.id);
          graphqlError(current, frame.payload);
          finish(current);
          break;
        case "complete":
          if (!current) break;
          active.delete(frame.id);
          finish(current);
          break;
        default:
          break;
      }
    };
    ws.onclose = (event) => {
      if (ws !== socket) return;
      socket = null;
      acked = false;
      if (event.code === 4403) fatal = NOT_ALLOWED;
      else if (event.code === 4401) fatal = SIGN_IN;
      // A reply cut off mid-stream is not resumed: the server cancels it on disconnect.
      // Messages not yet sent wait in the queue for the next connection instead.
      active.forEach((current) => {
        if (!fatal) showError(current, "The connection was interrupted. Please send again.");
        finish(current);
      });
      active.clear();
      if (fatal) {
        queued.forEach((item) => finish(item.turn));
        queued.length = 0;
        setStatus(fatal);
        refreshControls();
        return;
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    // Exponential backoff with jitter, so a restarted server is not hit by every page at once.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, attempt));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    attempt += 1;
    if (attempt > 1) setStatus("Reconnecting\u2026");
    retryTimer = setTimeout(() => {
      retryTimer = null;
      connect();
    }, delay);
  }

  function subscribe(current, input) {
    seq += 1;
    const id = "kr-" + seq + "-" + Math.random().toString(36).slice(2, 8);
    current.id = id;
    const frame = { id: id, type: "subscribe", payload: { query: CHAT, variables: { input: input } } };
    if (socket && acked && socket.readyState === WebSocket.OPEN) {
      active.set(id, current);
      send(frame);
    } else {
      queued.push({ frame: frame, turn: current });
      if (retryTimer) {
        clearTimeout(retryTimer); // the user is waiting: try now instead of after the backoff
        retryTimer = null;
      }
      connect();
    }
  }

  window.addEventListener("online", () => {
    if (retryTimer && !ui.panel.hidden) {
      clearTimeout(retryTimer);
      retryTimer = null;
      connect();
    }
  });

  window.KindRobotsChat = {
    open: () => open(),
    close: () => hide(),
    setToken: (value) => {
      token = value || null;
      if (fatal === SIGN_IN) fatal = null;
      setStatus("");
      refreshControls();
      if (socket) socket.close(1000, "token changed"); // reconnects with the new token
      else if (!ui.panel.hidden) connect();
    },
  };

  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);
})();
