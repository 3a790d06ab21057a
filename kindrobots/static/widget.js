/*! Kind Robots chat widget. Plain ES2017, no dependencies, no build step.
 *
 * <script src="https://api.example.com/widget.js" data-project-key="pk_..."
 *         data-title="Help" data-greeting="Hi! How can we help?" data-accent="#0b7285"
 *         data-position="bottom-left" data-open="true" data-token="<end-user JWT>" async></script>
 *
 * Speaks graphql-transport-ws to the /graphql endpoint beside this script.
 * The page steers it through window.KindRobotsChat (init, open, close, reset, setToken)
 * and hears from it through window CustomEvents named "kindrobots:<name>".
 *
 * Isolation: a Shadow DOM on a host element of our own, not an iframe. An iframe would
 * isolate more, but it needs the host page's CSP to allow frame-src for our origin (the
 * strict pages we must support allow only script-src and connect-src), and it cannot size
 * itself to the launcher without a postMessage protocol. The shadow root keeps the page's
 * selectors out; `:host { all: initial !important }` cuts off inherited properties (a
 * shadow tree's !important beats the page's). Styles come from a constructable stylesheet
 * (adoptedStyleSheets): CSP's style-src governs <style> elements, style attributes and
 * fetched sheets, not sheets built in script, and a <link> to a sheet on our origin would
 * be refused by `style-src 'self'`, whose 'self' is the host page's origin, not ours.
 * Nothing here sets a style attribute; the accent colour is a CSSOM write to our own sheet.
 * The root is open, not closed: a closed root hides nothing from scripts of the same page
 * (they can wrap attachShadow), and an open one lets the site's own tests reach the widget.
 *
 * Model output is untrusted: it is parsed into DOM nodes and written with textContent only.
 */
(function () {
  "use strict";

  if (window.KindRobotsChat && window.KindRobotsChat.version) return; // the script twice

  const P = "kr-chat-"; // class prefix: stable names for the site's own tests
  const SVG = "http://www.w3.org/2000/svg";
  const PROTOCOL = "graphql-transport-ws";
  const MAX_CHARS = 8000;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  const MAX_INLINE_DEPTH = 4;
  const DEFAULT_ACCENT = "#3b5bdb";
  const POSITIONS = ["bottom-right", "bottom-left"];
  const CHAT = "subscription KindRobotsChat($input: ChatInput!) { chat(input: $input) { " +
    "__typename ... on ChatStarted { conversationId conversationToken } " +
    "... on ChatDelta { text } " +
    "... on ChatToolCall { name } ... on ChatCompleted { messageId } " +
    "... on ChatError { message retryAfter } } }";

  // Every string a visitor can see or hear; KindRobotsChat.init({strings: {...}}) overrides.
  const STRINGS = {
    title: "Chat",
    greeting: "",
    openChat: "Open chat",
    closeChat: "Close chat",
    log: "Conversation",
    inputLabel: "Message",
    placeholder: "Type a message\u2026",
    send: "Send",
    usingTool: "Using {name}\u2026",
    rateUp: "Helpful",
    rateDown: "Not helpful",
    notAllowed: "This site is not allowed to use this chat.",
    signIn: "Please sign in to use this chat.",
    reconnecting: "Reconnecting\u2026",
    rateLimited: "You're sending messages too quickly \u2014 try again in {wait}.",
    limitReached: "This chat has reached its limit for now \u2014 try again in {wait}.",
    rateLimitedSoon: "You're sending messages too quickly \u2014 try again in a moment.",
    paymentRequired: "This chat has used up its allowance. Please try again later.",
    upstream: "The assistant is unavailable right now.",
    upstreamRetry: "The assistant is busy right now \u2014 try again in {wait}.",
    unavailable: "The chat service is unavailable right now. Please try again in a moment.",
    network: "The connection was interrupted. Please send your message again.",
    notFound: "This conversation is no longer available. Please send your message again.",
    generic: "Something went wrong. Please try again.",
    seconds: "{n} seconds",
    second: "1 second",
    minutes: "{n} minutes",
    hours: "{n} hours",
  };

  const script = document.currentScript ||
    document.querySelector("script[data-project-key][src*='widget.js']");
  if (!script || !script.src) return;
  const projectKey = script.getAttribute("data-project-key") || "";
  if (!/^pk_[A-Za-z0-9_-]{1,64}$/.test(projectKey)) {
    console.warn("Kind Robots widget: data-project-key is missing or malformed.");
    return;
  }
  const endpoint = new URL("/graphql", script.src);
  endpoint.protocol = endpoint.protocol === "https:" ? "wss:" : "ws:";

  const config = {
    title: null,
    greeting: null,
    accent: DEFAULT_ACCENT,
    position: "bottom-right",
    strings: Object.assign({}, STRINGS),
  };
  let token = script.getAttribute("data-token") || null;

  function format(template, values) {
    return String(template).replace(/\{(\w+)\}/g, (all, name) =>
      Object.prototype.hasOwnProperty.call(values, name) ? String(values[name]) : all);
  }

  function t(name, values) {
    return format(config.strings[name], values || {});
  }

  function wait(seconds) {
    const n = Math.max(1, Math.ceil(seconds));
    if (n === 1) return t("second");
    if (n < 120) return t("seconds", { n: n });
    if (n < 7200) return t("minutes", { n: Math.ceil(n / 60) });
    return t("hours", { n: Math.ceil(n / 3600) });
  }

  // A colour the browser accepts, as rgb; null for anything else (never pasted into CSS text).
  function parseColour(value) {
    if (typeof value !== "string" || !window.CSS || !window.CSS.supports("color", value)) return null;
    const context = document.createElement("canvas").getContext("2d");
    if (!context) return null;
    context.fillStyle = "#000";
    context.fillStyle = value;
    const resolved = context.fillStyle;
    const hex = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(resolved);
    if (hex) return [1, 2, 3].map((i) => parseInt(hex[i], 16));
    const rgb = /^rgba?\((\d+),\s*(\d+),\s*(\d+)/.exec(resolved);
    return rgb ? [1, 2, 3].map((i) => Number(rgb[i])) : null;
  }

  function configure(options) {
    if (!options || typeof options !== "object") return;
    if (typeof options.title === "string") config.title = options.title;
    if (typeof options.greeting === "string") config.greeting = options.greeting;
    if (options.accent !== undefined) {
      if (parseColour(options.accent)) config.accent = options.accent;
      else console.warn("Kind Robots widget: accent is not a CSS colour:", options.accent);
    }
    if (options.position !== undefined) {
      if (POSITIONS.indexOf(options.position) >= 0) config.position = options.position;
      else console.warn("Kind Robots widget: position must be one of", POSITIONS.join(", "));
    }
    if (options.strings && typeof options.strings === "object") {
      Object.keys(options.strings).forEach((name) => {
        if (name in STRINGS && typeof options.strings[name] === "string") {
          config.strings[name] = options.strings[name];
        }
      });
    }
  }

  function fromAttributes() {
    const options = {};
    ["title", "greeting", "accent", "position"].forEach((name) => {
      const value = script.getAttribute("data-" + name);
      if (value !== null) options[name] = value;
    });
    const strings = script.getAttribute("data-strings");
    if (strings) {
      try {
        options.strings = JSON.parse(strings);
      } catch (error) {
        console.warn("Kind Robots widget: data-strings is not JSON.");
      }
    }
    return options;
  }

  function emit(name, detail) {
    window.dispatchEvent(new CustomEvent("kindrobots:" + name, { detail: detail || {} }));
  }

  // ---- storage: the conversation survives a reload when the page may keep it ----------

  const STORAGE_KEY = "kindrobots:" + projectKey;
  const storage = (function () {
    try {
      const store = window.localStorage;
      store.setItem(STORAGE_KEY + ":probe", "1");
      store.removeItem(STORAGE_KEY + ":probe");
      return store;
    } catch (error) {
      return null; // private mode, blocked cookies, a sandboxed frame: memory only
    }
  })();

  // {conversationToken, conversationId}; both null after reset() (nothing to resume).
  let conversation = (function () {
    if (!storage) return null;
    try {
      const saved = JSON.parse(storage.getItem(STORAGE_KEY) || "null");
      if (!saved || typeof saved !== "object") return null;
      return {
        conversationToken: typeof saved.conversationToken === "string" ? saved.conversationToken : null,
        conversationId: typeof saved.conversationId === "string" ? saved.conversationId : null,
      };
    } catch (error) {
      return null;
    }
  })();

  function remember(value) {
    conversation = value;
    if (!storage) return;
    try {
      if (value) storage.setItem(STORAGE_KEY, JSON.stringify(value));
      else storage.removeItem(STORAGE_KEY);
    } catch (error) {
      // A full or revoked storage: the conversation lasts for this page view only.
    }
  }

  // ---- styles ---------------------------------------------------------------------------

  const STYLES = `
:host{all:initial!important;--kr-accent:${DEFAULT_ACCENT}!important;--kr-on-accent:#fff!important}
.${P}root{all:initial;position:fixed;right:20px;bottom:20px;z-index:2147483000;display:block;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2330;text-align:left;direction:ltr}
.${P}root.${P}left{right:auto;left:20px}
.${P}root *,.${P}root *::before,.${P}root *::after{box-sizing:border-box;margin:0;padding:0;font:inherit;color:inherit;letter-spacing:normal;text-transform:none;text-shadow:none;float:none;width:auto;height:auto;min-width:0;max-width:none;border:0;background:none;visibility:inherit}
.${P}root [hidden]{display:none!important}
.${P}icon{display:block;width:26px;height:26px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round}
.${P}launcher{display:flex;align-items:center;justify-content:center;width:56px;height:56px;border-radius:50%;background:var(--kr-accent);color:var(--kr-on-accent);cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25)}
.${P}launcher:focus-visible,.${P}root button:focus-visible,.${P}input:focus-visible{outline:3px solid #ffd43b;outline-offset:2px}
.${P}left .${P}launcher{margin-right:auto}
.${P}root:not(.${P}left) .${P}launcher{margin-left:auto}
.${P}panel{position:absolute;right:0;bottom:68px;width:min(360px,calc(100vw - 40px));height:min(520px,calc(100vh - 110px));display:flex;flex-direction:column;background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);overflow:hidden}
.${P}left .${P}panel{right:auto;left:0}
.${P}header{display:flex;align-items:center;justify-content:space-between;gap:8px;padding:10px 10px 10px 14px;background:var(--kr-accent);color:var(--kr-on-accent);font-weight:600;font-size:15px}
.${P}title{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.${P}close{display:flex;align-items:center;justify-content:center;width:32px;height:32px;border-radius:6px;cursor:pointer;flex:none}
.${P}close .${P}icon{width:20px;height:20px}
.${P}messages{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px;background:#fff}
.${P}msg{display:block;max-width:85%;padding:8px 11px;border-radius:10px;overflow-wrap:anywhere}
.${P}user{align-self:flex-end;background:var(--kr-accent);color:var(--kr-on-accent);white-space:pre-wrap}
.${P}assistant,.${P}greeting{align-self:flex-start;background:#f1f3f5}
.${P}assistant.${P}busy:empty::after{content:"\\2026"}
.${P}msg p,.${P}msg ul,.${P}msg ol,.${P}msg pre,.${P}msg blockquote{display:block;margin:0 0 8px}
.${P}msg>:last-child{margin-bottom:0}
.${P}msg ul,.${P}msg ol{padding-left:20px}
.${P}msg ul{list-style:disc outside}
.${P}msg ol{list-style:decimal outside}
.${P}msg li{display:list-item}
.${P}msg strong{font-weight:700}
.${P}msg em{font-style:italic}
.${P}msg code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;background:rgba(0,0,0,.07);border-radius:4px;padding:1px 4px}
.${P}msg pre{background:#1f2330;color:#f8f9fa;border-radius:8px;padding:8px 10px;overflow-x:auto;white-space:pre}
.${P}msg pre code{background:none;padding:0;color:inherit}
.${P}msg blockquote{border-left:3px solid #ced4da;padding-left:8px;color:#495057}
.${P}msg a{color:#1c4fd8;text-decoration:underline;cursor:pointer}
.${P}rating{display:flex;gap:4px;align-self:flex-start;margin-top:-4px}
.${P}rate{display:flex;align-items:center;justify-content:center;width:28px;height:28px;border-radius:6px;color:#868e96;cursor:pointer}
.${P}rate .${P}icon{width:16px;height:16px}
.${P}rate:hover{background:#f1f3f5;color:#495057}
.${P}rate[aria-pressed="true"]{color:var(--kr-accent);background:#edf2ff}
.${P}rate[aria-pressed="true"] .${P}icon{fill:currentColor}
.${P}tool{align-self:flex-start;font-size:12px;color:#666;font-style:italic}
.${P}error{align-self:stretch;font-size:13px;color:#c92a2a}
.${P}status{display:block;padding:6px 12px;font-size:13px;background:#fff4e6;color:#a61e4d}
.${P}status:empty{display:none}
.${P}form{display:flex;gap:6px;padding:10px;border-top:1px solid #e9ecef;background:#fff}
.${P}input{display:block;flex:1;min-width:0;height:40px;padding:8px 10px;border:1px solid #ced4da;border-radius:8px;font-size:16px;line-height:22px;color:#1f2330;background:#fff}
.${P}input::placeholder{color:#868e96;opacity:1}
.${P}send{display:block;flex:none;height:40px;padding:0 14px;border-radius:8px;background:var(--kr-accent);color:var(--kr-on-accent);font-size:15px;cursor:pointer}
.${P}send:disabled,.${P}input:disabled{opacity:.5;cursor:not-allowed}
@media (max-width:480px){.${P}root{right:12px;bottom:12px}.${P}root.${P}left{left:12px}.${P}panel{position:fixed;left:8px;right:8px;bottom:80px;width:auto;height:calc(100vh - 96px)}.${P}left .${P}panel{left:8px;right:8px}}`;

  let hostRule = null; // the :host rule of our sheet: the accent colour is set there

  function adoptStyles(shadow) {
    let sheet;
    if ("adoptedStyleSheets" in Document.prototype && "replaceSync" in CSSStyleSheet.prototype) {
      sheet = new CSSStyleSheet();
      sheet.replaceSync(STYLES);
      shadow.adoptedStyleSheets = [sheet];
    } else {
      // Browsers before constructable sheets (Safari < 16.4): works where inline styles may.
      const style = document.createElement("style");
      style.textContent = STYLES;
      shadow.appendChild(style);
      sheet = style.sheet;
    }
    hostRule = sheet && sheet.cssRules[0];
  }

  function applyAccent() {
    if (!hostRule) return;
    const rgb = parseColour(config.accent) || parseColour(DEFAULT_ACCENT);
    // Relative luminance (WCAG): dark text on a light accent stays readable.
    const linear = rgb.map((c) => {
      const s = c / 255;
      return s <= 0.03928 ? s / 12.92 : Math.pow((s + 0.055) / 1.055, 2.4);
    });
    const luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2];
    hostRule.style.setProperty("--kr-accent", "rgb(" + rgb.join(",") + ")", "important");
    hostRule.style.setProperty("--kr-on-accent", luminance > 0.45 ? "#1f2330" : "#fff", "important");
  }

  // ---- DOM helpers ----------------------------------------------------------------------

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls.split(" ").map((c) => P + c).join(" ");
    if (text) node.textContent = text;
    return node;
  }

  const ICONS = {
    chat: ["M5 4h14a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2h-8l-5 4v-4H5a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"],
    close: ["M6 6l12 12", "M18 6L6 18"],
    up: ["M7 11l4-8a3 3 0 0 1 3 3v4h5a2 2 0 0 1 2 2.3l-1.3 7A2 2 0 0 1 17.7 21H7z", "M7 11H4v10h3"],
    down: ["M17 13l-4 8a3 3 0 0 1-3-3v-4H5a2 2 0 0 1-2-2.3l1.3-7A2 2 0 0 1 6.3 3H17z", "M17 13h3V3h-3"],
  };

  function icon(name) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("class", P + "icon");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    ICONS[name].forEach((d) => {
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", d);
      svg.appendChild(path);
    });
    return svg;
  }

  // ---- safe Markdown: DOM nodes and text nodes only ------------------------------------

  const SAFE_SCHEMES = ["http:", "https:", "mailto:"];

  function safeUrl(raw) {
    let url;
    try {
      url = new URL(raw); // absolute only: a relative link would point into the host site
    } catch (error) {
      return null;
    }
    return SAFE_SCHEMES.indexOf(url.protocol) >= 0 ? url.href : null;
  }

  function link(parent, href, label) {
    const url = safeUrl(href);
    if (!url) {
      parent.appendChild(document.createTextNode(label)); // the words stay, the link does not
      return;
    }
    const a = document.createElement("a");
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.textContent = label;
    parent.appendChild(a);
  }

  // Inline spans: `code`, **strong**, *em* / _em_, [label](url), <url> and bare URLs.
  // A delimiter without a closer is remembered, so a line of unmatched stars stays linear.
  function inline(text, parent, depth) {
    const missing = {};
    let plain = "";
    let i = 0;
    const flush = () => {
      if (plain) parent.appendChild(document.createTextNode(plain));
      plain = "";
    };
    const closer = (delim, from) => {
      if (missing[delim]) return -1;
      const at = text.indexOf(delim, from);
      if (at < 0) missing[delim] = true;
      return at;
    };
    while (i < text.length) {
      const c = text[i];
      if (c === "\\" && i + 1 < text.length && /[\\`*_[\]()<>#+\-.!~]/.test(text[i + 1])) {
        plain += text[i + 1];
        i += 2;
        continue;
      }
      if (c === "`") {
        let run = 1;
        while (text[i + run] === "`") run += 1;
        const fence = "`".repeat(run);
        const end = closer(fence, i + run);
        if (end > i) {
          flush();
          parent.appendChild(el("code", "", text.slice(i + run, end)));
          i = end + run;
          continue;
        }
        plain += fence;
        i += run;
        continue;
      }
      if ((c === "*" || c === "_") && depth < MAX_INLINE_DEPTH) {
        const strong = text[i + 1] === c;
        const delim = strong ? c + c : c;
        const start = i + delim.length;
        const intraword = c === "_" && i > 0 && /\w/.test(text[i - 1]);
        if (!intraword && start < text.length && !/\s/.test(text[start])) {
          const end = closer(delim, start + 1);
          if (end > start && !/\s/.test(text[end - 1])) {
            flush();
            const span = document.createElement(strong ? "strong" : "em");
            inline(text.slice(start, end), span, depth + 1);
            parent.appendChild(span);
            i = end + delim.length;
            continue;
          }
        }
        plain += delim;
        i += delim.length;
        continue;
      }
      if (c === "[") {
        const close = closer("](", i + 1);
        if (close > i) {
          const end = closingParen(text, close + 2);
          if (end > close) {
            flush();
            link(parent, text.slice(close + 2, end).trim(), text.slice(i + 1, close));
            i = end + 1;
            continue;
          }
        }
      }
      if (c === "<") {
        const m = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/.exec(text.slice(i, i + 2048));
        if (m) {
          flush();
          link(parent, m[1], m[1].replace(/^mailto:/, ""));
          i += m[0].length;
          continue;
        }
      }
      if ((c === "h" || c === "H") && (i === 0 || /[\s(]/.test(text[i - 1]))) {
        const m = /^https?:\/\/[^\s<>()]+/i.exec(text.slice(i, i + 2048));
        if (m) {
          const url = m[0].replace(/[.,;:!?'"]+$/, "");
          flush();
          link(parent, url, url);
          i += url.length;
          continue;
        }
      }
      plain += c;
      i += 1;
    }
    flush();
  }

  // The ")" that closes a link's URL, past balanced pairs inside it: "f(1)" stays whole.
  function closingParen(text, from) {
    let depth = 0;
    const limit = Math.min(text.length, from + 2048);
    for (let at = from; at < limit; at += 1) {
      if (text[at] === "(") depth += 1;
      else if (text[at] === ")" && depth-- === 0) return at;
      else if (text[at] === "\n") return -1;
    }
    return -1;
  }

  function inlineLines(lines, parent) {
    lines.forEach((line, index) => {
      if (index) parent.appendChild(document.createElement("br"));
      inline(line, parent, 0);
    });
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)/;
  const ITEM = /^ {0,6}([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const HEADING = /^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$/;
  const QUOTE = /^ {0,3}> ?(.*)$/;

  // Blocks never span a blank line outside a code fence; that is what lets a streamed
  // reply freeze everything before its last blank line (see MarkdownView).
  function blocks(text, parent) {
    const lines = text.split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        i += 1;
        continue;
      }
      const fence = FENCE.exec(line);
      if (fence) {
        const body = [];
        i += 1;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        i += 1; // the closing fence (or the end of a reply still streaming)
        const pre = document.createElement("pre");
        const code = document.createElement("code");
        code.textContent = body.join("\n");
        pre.appendChild(code);
        parent.appendChild(pre);
        continue;
      }
      const heading = HEADING.exec(line);
      if (heading) {
        const p = document.createElement("p");
        const strong = document.createElement("strong");
        inline(heading[1], strong, 1);
        p.appendChild(strong);
        parent.appendChild(p);
        i += 1;
        continue;
      }
      if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && lines[i].trim() && QUOTE.test(lines[i])) {
          quoted.push(QUOTE.exec(lines[i++])[1]);
        }
        const quote = document.createElement("blockquote");
        inlineLines(quoted, quote);
        parent.appendChild(quote);
        continue;
      }
      const item = ITEM.exec(line);
      if (item) {
        const ordered = /\d/.test(item[1]);
        const list = document.createElement(ordered ? "ol" : "ul");
        if (ordered && parseInt(item[1], 10) !== 1) list.start = parseInt(item[1], 10);
        let current = null;
        let content = [];
        const close = () => {
          if (current) inlineLines(content, current);
        };
        while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i])) {
          const next = ITEM.exec(lines[i]);
          if (next && /\d/.test(next[1]) === ordered) {
            close();
            current = list.appendChild(document.createElement("li"));
            content = [next[2]];
          } else if (next) {
            break; // the other kind of list starts
          } else {
            content.push(lines[i].trim());
          }
          i += 1;
        }
        close();
        parent.appendChild(list);
        continue;
      }
      const paragraph = [];
      while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) &&
             !ITEM.test(lines[i]) && !HEADING.test(lines[i]) && !QUOTE.test(lines[i])) {
        paragraph.push(lines[i++]);
      }
      const p = document.createElement("p");
      inlineLines(paragraph, p);
      parent.appendChild(p);
    }
  }

  // Renders a growing reply: blocks before the last blank line outside a fence are frozen
  // and never parsed again, so each delta costs the size of the last block, not the reply.
  function MarkdownView(container) {
    this.container = container;
    this.frozen = 0; // characters of the text already rendered for good
    this.tail = []; // nodes of the unfrozen rest, replaced on every update
  }

  MarkdownView.prototype.update = function (text) {
    this.tail.forEach((node) => node.remove());
    this.tail = [];
    const rest = text.slice(this.frozen);
    const cut = stableEnd(rest);
    if (cut > 0) {
      blocks(rest.slice(0, cut), this.container);
      this.frozen += cut;
    }
    const fragment = document.createDocumentFragment();
    blocks(text.slice(this.frozen), fragment);
    this.tail = Array.prototype.slice.call(fragment.childNodes);
    this.container.appendChild(fragment);
  };

  function stableEnd(text) {
    let open = null; // the fence marker of an open code block
    let end = 0;
    let at = 0;
    while (at < text.length) {
      const nl = text.indexOf("\n", at);
      if (nl < 0) break; // the last line may still grow
      const line = text.slice(at, nl);
      if (open) {
        if (line.trim().startsWith(open)) open = null;
      } else {
        const fence = FENCE.exec(line);
        if (fence) open = fence[1];
        else if (!line.trim() && at > 0) end = nl + 1;
      }
      at = nl + 1;
    }
    return end;
  }

  function renderMarkdown(container, text) {
    new MarkdownView(container).update(text);
  }

  // ---- the panel ------------------------------------------------------------------------

  const ui = {};

  function mount() {
    ui.host = document.createElement("kind-robots-chat");
    const shadow = ui.host.attachShadow({ mode: "open" });
    ui.shadow = shadow;
    adoptStyles(shadow);
    ui.root = el("div", "root");
    ui.launcher = el("button", "launcher");
    ui.launcher.type = "button";
    ui.launcher.appendChild(icon("chat"));
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.panel = el("div", "panel");
    ui.panel.id = P + "panel";
    ui.panel.hidden = true;
    ui.panel.setAttribute("role", "dialog");
    ui.launcher.setAttribute("aria-controls", ui.panel.id);
    const header = el("div", "header");
    ui.title = header.appendChild(el("span", "title"));
    ui.close = header.appendChild(el("button", "close"));
    ui.close.type = "button";
    ui.close.appendChild(icon("close"));
    ui.messages = el("div", "messages");
    ui.messages.setAttribute("role", "log");
    ui.messages.setAttribute("aria-live", "polite");
    ui.greeting = ui.messages.appendChild(el("div", "msg greeting"));
    ui.history = ui.messages.appendChild(el("div", "history")); // placeholder, see showHistory
    ui.history.hidden = true;
    ui.status = el("div", "status");
    ui.status.setAttribute("role", "status");
    ui.form = el("form", "form");
    ui.input = el("input", "input");
    ui.input.type = "text";
    ui.input.maxLength = MAX_CHARS;
    ui.input.autocomplete = "off";
    ui.send = el("button", "send");
    ui.send.type = "submit";
    ui.form.appendChild(ui.input);
    ui.form.appendChild(ui.send);
    ui.panel.appendChild(header);
    ui.panel.appendChild(ui.messages);
    ui.panel.appendChild(ui.status);
    ui.panel.appendChild(ui.form);
    ui.root.appendChild(ui.panel);
    ui.root.appendChild(ui.launcher);
    shadow.appendChild(ui.root);
    applyConfig();
    document.body.appendChild(ui.host);

    ui.launcher.addEventListener("click", () => (ui.panel.hidden ? open() : hide()));
    ui.close.addEventListener("click", hide);
    ui.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        hide();
      }
    });
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
  }

  function applyConfig() {
    const title = config.title || t("title");
    ui.title.textContent = title;
    ui.panel.setAttribute("aria-label", title);
    ui.launcher.setAttribute("aria-label", (ui.panel.hidden ? t("openChat") : t("closeChat")) +
      ": " + title);
    ui.close.setAttribute("aria-label", t("closeChat"));
    ui.messages.setAttribute("aria-label", t("log"));
    ui.input.placeholder = t("placeholder");
    ui.input.setAttribute("aria-label", t("inputLabel"));
    ui.send.textContent = t("send");
    const greeting = config.greeting !== null ? config.greeting : t("greeting");
    ui.greeting.textContent = "";
    renderMarkdown(ui.greeting, greeting);
    ui.greeting.hidden = !greeting;
    ui.root.classList.toggle(P + "left", config.position === "bottom-left");
    if (fatal) setStatus(t(fatal));
    applyAccent();
  }

  function open() {
    if (!ui.panel.hidden) return;
    ui.panel.hidden = false;
    ui.launcher.setAttribute("aria-expanded", "true");
    applyConfig();
    (ui.input.disabled ? ui.close : ui.input).focus();
    connect(); // lazily: a page view that never opens the chat costs the server nothing
    emit("open");
  }

  function hide() {
    if (ui.panel.hidden) return;
    const focused = ui.shadow.activeElement !== null;
    ui.panel.hidden = true;
    ui.launcher.setAttribute("aria-expanded", "false");
    applyConfig();
    if (focused) ui.launcher.focus(); // only when the visitor was in the widget
    emit("close");
  }

  function nearBottom() {
    return ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
  }

  function append(node) {
    const atBottom = nearBottom();
    ui.messages.appendChild(node);
    if (atBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
    return node;
  }

  function setStatus(text) {
    ui.status.textContent = text || "";
  }

  function refreshControls() {
    ui.input.disabled = fatal !== null;
    ui.send.disabled = fatal !== null || turn !== null;
  }

  // ---- ratings --------------------------------------------------------------------------

  const RATE = "mutation KindRobotsRate($input: RateMessageInput!) { " +
    "rateMessage(input: $input) { id rating } }";

  function ratingBar(messageId, rating) {
    const bar = el("div", "rating");
    const buttons = {};
    [["UP", "up", "rateUp"], ["DOWN", "down", "rateDown"]].forEach((spec) => {
      const button = el("button", "rate rate-" + spec[1]);
      button.type = "button";
      button.setAttribute("aria-label", t(spec[2]));
      button.setAttribute("aria-pressed", String(rating === spec[0]));
      button.appendChild(icon(spec[1]));
      button.addEventListener("click", () => rate(spec[0]));
      buttons[spec[0]] = button;
      bar.appendChild(button);
    });
    let current = rating || null;
    const show = (value) => {
      Object.keys(buttons).forEach((key) =>
        buttons[key].setAttribute("aria-pressed", String(value === key)));
    };
    function rate(choice) {
      const previous = current;
      const next = current === choice ? null : choice; // pressing it again takes it back
      current = next;
      show(next);
      const input = { messageId: messageId, rating: next };
      if (conversation && conversation.conversationToken) {
        input.conversationToken = conversation.conversationToken;
      }
      request(RATE, { input: input }).then((data) => {
        current = (data && data.rateMessage && data.rateMessage.rating) || null;
        show(current);
        emit("rate", { messageId: messageId, rating: current });
      }, (failure) => {
        current = previous;
        show(previous);
        report(failure.code, failure.retryAfter);
      });
    }
    return bar;
  }

  // ---- history --------------------------------------------------------------------------

  const HISTORY = "query KindRobotsHistory($token: String) { widgetConversation(" +
    "conversationToken: $token) { id messages { id role content rating } } }";
  let history = "idle"; // idle | loading | done

  function loadHistory() {
    if (history !== "idle") return;
    const saved = conversation;
    // Nothing to resume: no saved conversation, and no end user whose latest one counts.
    if (!(saved && saved.conversationToken) && !(token && !saved)) {
      history = "done";
      return;
    }
    history = "loading";
    const asked = saved && saved.conversationToken;
    request(HISTORY, { token: asked || null }).then((data) => {
      history = "done";
      if (conversation !== saved) return; // reset() or a new conversation meanwhile
      const found = data && data.widgetConversation;
      if (!found) {
        remember(null); // unknown token, or another end user's: start afresh
        return;
      }
      remember({ conversationToken: asked || null, conversationId: found.id });
      showHistory(found.messages || []);
    }, (failure) => {
      history = failure.code === "NETWORK" ? "idle" : "done"; // retried on the next connection
    });
  }

  function showHistory(messages) {
    const fragment = document.createDocumentFragment();
    messages.forEach((message) => {
      if (!message.content) return; // a turn that only called tools
      if (message.role === "user") {
        fragment.appendChild(el("div", "msg user", message.content));
      } else if (message.role === "assistant") {
        const bubble = fragment.appendChild(el("div", "msg assistant"));
        renderMarkdown(bubble, message.content);
        fragment.appendChild(ratingBar(message.id, message.rating));
      }
    });
    ui.messages.insertBefore(fragment, ui.history);
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  // ---- one exchange: a user message and the streamed reply --------------------------------

  let turn = null; // {draft, user, bubble, view, text, tool, started, messageId, id}

  function submit() {
    const message = ui.input.value.trim();
    if (!message || turn || fatal) return;
    ui.input.value = "";
    const current = {
      draft: message,
      user: append(el("div", "msg user", message)),
      bubble: null,
      view: null,
      text: "",
      tool: null,
      started: false,
      messageId: null,
      id: null,
    };
    current.bubble = append(el("div", "msg assistant busy"));
    current.view = new MarkdownView(current.bubble);
    turn = current;
    ui.messages.setAttribute("aria-busy", "true"); // announce the reply once, when complete
    refreshControls();
    const input = { message: message };
    if (conversation && conversation.conversationId) input.conversationId = conversation.conversationId;
    if (conversation && conversation.conversationToken) {
      input.conversationToken = conversation.conversationToken;
    }
    current.id = operate(CHAT, { input: input }, {
      next: (payload) => {
        if (payload.errors) refused(current, payload.errors);
        if (payload.data && payload.data.chat) onEvent(current, payload.data.chat);
      },
      error: (errors) => {
        refused(current, errors);
        finish(current);
      },
      complete: () => finish(current),
      lost: (reason) => {
        if (reason !== "fatal") report("NETWORK");
        if (!current.started) restoreDraft(current);
        finish(current);
      },
    });
  }

  function onEvent(current, event) {
    if (current.tool && event.__typename !== "ChatToolCall") {
      current.tool.remove();
      current.tool = null;
    }
    switch (event.__typename) {
      case "ChatStarted":
        current.started = true;
        emit("message", { role: "user", content: current.draft, conversationId: event.conversationId });
        if (!conversation || conversation.conversationId !== event.conversationId) {
          remember({
            conversationToken: event.conversationToken ||
              (conversation && conversation.conversationToken) || null,
            conversationId: event.conversationId,
          });
        }
        break;
      case "ChatDelta": {
        const follow = nearBottom();
        current.text += event.text;
        current.view.update(current.text);
        if (follow) ui.messages.scrollTop = ui.messages.scrollHeight;
        break;
      }
      case "ChatToolCall":
        if (current.tool) current.tool.remove();
        current.tool = el("div", "tool", t("usingTool", { name: event.name }));
        ui.messages.insertBefore(current.tool, current.bubble);
        break;
      case "ChatCompleted":
        current.messageId = event.messageId;
        break;
      case "ChatError":
        // Whatever failed upstream, the visitor hears our words, never the provider's.
        report("UPSTREAM_ERROR", event.retryAfter, true);
        break;
      default: // anything newer this widget does not know
        break;
    }
  }

  function restoreDraft(current) {
    current.user.remove();
    if (!ui.input.value) ui.input.value = current.draft; // never clobber newer typing
  }

  function finish(current) {
    if (turn !== current) return;
    if (current.tool) current.tool.remove();
    current.bubble.classList.remove(P + "busy");
    if (!current.text) current.bubble.remove();
    else if (current.messageId) {
      current.bubble.after(ratingBar(current.messageId, null));
      emit("message", {
        role: "assistant",
        content: current.text,
        messageId: current.messageId,
        conversationId: conversation && conversation.conversationId,
      });
    }
    turn = null;
    ui.messages.removeAttribute("aria-busy");
    refreshControls();
  }

  function failure(errors) {
    const first = (errors && errors[0]) || {};
    const extensions = first.extensions || {};
    return { code: extensions.code || "UNKNOWN", retryAfter: extensions.retryAfter };
  }

  // A send the server refused before accepting it: the visitor keeps the draft.
  function refused(current, errors) {
    const found = failure(errors);
    if (found.code === "NOT_FOUND") remember(null); // the saved conversation is gone
    if (!current.started) restoreDraft(current);
    report(found.code, found.retryAfter);
  }

  function explain(code, retryAfter, midStream) {
    switch (code) {
      case "RATE_LIMITED":
        if (!retryAfter) return t("rateLimitedSoon");
        return t(retryAfter > 600 ? "limitReached" : "rateLimited", { wait: wait(retryAfter) });
      case "PAYMENT_REQUIRED":
        return t("paymentRequired");
      case "UPSTREAM_ERROR":
        return midStream && retryAfter ? t("upstreamRetry", { wait: wait(retryAfter) })
          : t("upstream");
      case "SERVICE_UNAVAILABLE":
        return t("unavailable");
      case "NETWORK":
        return t("network");
      case "NOT_FOUND":
        return t("notFound");
      case "UNAUTHENTICATED":
        return t("signIn");
      case "FORBIDDEN":
        return t("notAllowed");
      default:
        return t("generic");
    }
  }

  function report(code, retryAfter, midStream) {
    const message = explain(code, retryAfter, midStream);
    append(el("div", "error", message));
    emit("error", { code: code, message: message, retryAfter: retryAfter || null });
  }

  // ---- graphql-transport-ws --------------------------------------------------------------

  let socket = null;
  let acked = false;
  let fatal = null; // the string naming why this page may not chat (4401/4403); no reconnects
  let attempt = 0;
  let retryTimer = null;
  let seq = 0;
  const queued = []; // {frame, handler}: operations waiting for connection_ack
  const active = new Map(); // operation id -> handler, for operations sent

  function send(frame) {
    socket.send(JSON.stringify(frame));
  }

  // Why the server closed, for the site owner: which check refused this page.
  function explainClose(event) {
    const reason = event.reason ? " (" + event.reason + ")" : "";
    if (event.code === 4403) {
      console.warn("Kind Robots widget: the server refused this page, code 4403" + reason +
        ". Check data-project-key and the project's allowed origins (this page is " +
        location.origin + ").");
      return "notAllowed";
    }
    if (event.code === 4401) {
      console.warn("Kind Robots widget: the server refused the end-user token, code 4401" +
        reason + ". Check data-token / setToken() against the project's JWKS, issuer and audience.");
      return "signIn";
    }
    if (event.code === 1013) {
      console.warn("Kind Robots widget: the chat service is unavailable, code 1013" + reason +
        "; retrying.");
    } else if (event.code === 4429) {
      console.warn("Kind Robots widget: too many connections, code 4429" + reason + "; retrying.");
    }
    return null;
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
      const handler = active.get(frame.id);
      switch (frame.type) {
        case "connection_ack":
          acked = true;
          attempt = 0;
          setStatus("");
          while (queued.length) {
            const item = queued.shift();
            active.set(item.frame.id, item.handler);
            send(item.frame);
          }
          loadHistory();
          break;
        case "ping":
          send({ type: "pong" });
          break;
        case "next":
          if (handler) handler.next(frame.payload || {});
          break;
        case "error":
          if (!handler) break;
          active.delete(frame.id);
          handler.error(frame.payload);
          break;
        case "complete":
          if (!handler) break;
          active.delete(frame.id);
          handler.complete();
          break;
        default:
          break;
      }
    };
    ws.onclose = (event) => {
      if (ws !== socket) return;
      socket = null;
      const wasAcked = acked;
      acked = false;
      fatal = explainClose(event);
      if (!wasAcked && event.code === 1013) setStatus(t("unavailable"));
      // A reply cut off mid-stream is not resumed: the server cancels it on disconnect.
      // A message still waiting for the connection is handed back to the visitor too.
      const lost = Array.from(active.values()).concat(queued.map((item) => item.handler));
      active.clear();
      queued.length = 0;
      lost.forEach((handler) => handler.lost(fatal ? "fatal" : "network"));
      if (fatal) {
        setStatus(t(fatal));
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
    if (attempt > 1 && !ui.status.textContent) setStatus(t("reconnecting"));
    retryTimer = setTimeout(() => {
      retryTimer = null;
      connect();
    }, delay);
  }

  // Sends one operation (a subscription, query or mutation); returns its id.
  function operate(query, variables, handler) {
    seq += 1;
    const id = "kr-" + seq + "-" + Math.random().toString(36).slice(2, 8);
    const frame = { id: id, type: "subscribe", payload: { query: query, variables: variables } };
    if (fatal) {
      handler.lost("fatal");
    } else if (socket && acked && socket.readyState === WebSocket.OPEN) {
      active.set(id, handler);
      send(frame);
    } else {
      queued.push({ frame: frame, handler: handler });
      if (retryTimer) {
        clearTimeout(retryTimer); // the visitor is waiting: try now instead of after the backoff
        retryTimer = null;
      }
      connect();
    }
    return id;
  }

  function request(query, variables) {
    return new Promise((resolve, reject) => {
      let result = {};
      operate(query, variables, {
        next: (payload) => (result = payload),
        error: (errors) => reject(failure(errors)),
        complete: () => (result.errors ? reject(failure(result.errors)) : resolve(result.data)),
        lost: () => reject({ code: "NETWORK" }),
      });
    });
  }

  function cancelTurn() {
    if (!turn) return;
    const current = turn;
    if (active.has(current.id) && socket && socket.readyState === WebSocket.OPEN) {
      send({ id: current.id, type: "complete" });
    }
    active.delete(current.id);
    const waiting = queued.findIndex((item) => item.frame.id === current.id);
    if (waiting >= 0) queued.splice(waiting, 1);
    finish(current);
  }

  function reset() {
    cancelTurn();
    // Both null, not removed: an end user's latest conversation is not resumed either.
    remember({ conversationToken: null, conversationId: null });
    history = "done";
    Array.prototype.slice.call(ui.messages.children).forEach((node) => {
      if (node !== ui.greeting && node !== ui.history) node.remove();
    });
    emit("reset");
  }

  window.addEventListener("online", () => {
    if (retryTimer && !ui.panel.hidden) {
      clearTimeout(retryTimer);
      retryTimer = null;
      connect();
    }
  });

  // Calls made before the page has a body wait for the widget to mount.
  const pending = [];

  function whenMounted(action) {
    return function () {
      const args = arguments;
      if (ui.root) action.apply(null, args);
      else pending.push(() => action.apply(null, args));
    };
  }

  window.KindRobotsChat = {
    version: "2",
    init: whenMounted((options) => {
      configure(options);
      if (options && typeof options.token === "string") window.KindRobotsChat.setToken(options.token);
      applyConfig();
      if (options && options.open === true) open();
    }),
    open: whenMounted(open),
    close: whenMounted(hide),
    reset: whenMounted(reset),
    setToken: whenMounted((value) => {
      token = value || null;
      if (fatal === "signIn") fatal = null;
      setStatus("");
      refreshControls();
      if (socket) socket.close(1000, "token changed"); // reconnects with the new token
      else if (!ui.panel.hidden) connect();
    }),
  };

  configure(fromAttributes());

  function start() {
    mount();
    const openOnLoad = script.getAttribute("data-open");
    if (openOnLoad === "true" || openOnLoad === "") open();
    pending.splice(0).forEach((call) => call());
    emit("ready");
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
