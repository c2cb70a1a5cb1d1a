// One terminal tab: xterm.js on a websocket to the runlet process (runlet/ui/bridge.py).
// Output frames carry the job id and each chunk's sequence number; the tab remembers the next
// one it lacks, so a dropped connection resumes from there with no gap and no duplicate.
import { Terminal } from "/static/vendor/xterm.mjs";
import { FitAddon } from "/static/vendor/addon-fit.mjs";
import { SearchAddon } from "/static/vendor/addon-search.mjs";
import { WebLinksAddon } from "/static/vendor/addon-web-links.mjs";
import { Unicode11Addon } from "/static/vendor/addon-unicode11.mjs";

const LIGHT = { background: "#ffffff", foreground: "#1d232b", cursor: "#1d232b", selectionBackground: "#bcd3f5" };
const DARK = { background: "#0d1117", foreground: "#e3e8ee", cursor: "#e3e8ee", selectionBackground: "#264f78" };
const KEYS = { Esc: "\x1b", Tab: "\t", "↑": "\x1b[A", "↓": "\x1b[B", "←": "\x1b[D", "→": "\x1b[C" };
const decoder = () => new TextDecoder("utf-8");

function node(tag, cls, text) {
  const element = document.createElement(tag);
  if (cls) element.className = cls;
  if (text !== undefined) element.textContent = text;
  return element;
}

export class TerminalTab {
  static fontSize() {
    return Number(localStorage.getItem("runlet.fontSize")) || 14;
  }

  static guessSize(container) {
    const width = Math.max(container.clientWidth || document.body.clientWidth - 40, 320);
    const height = Math.max(window.innerHeight - 160, 200);
    const size = TerminalTab.fontSize();
    return { rows: Math.min(1000, Math.max(5, Math.floor(height / (size * 1.2)))),
      cols: Math.min(1000, Math.max(20, Math.floor(width / (size * 0.6)))) };
  }

  constructor(container, jobId, { readOnly = false, note = "", button = null, log = false } = {}) {
    this.jobId = jobId;
    this.readOnly = readOnly;
    this.button = button;
    this.nextSeq = 0;
    this.state = null;
    this.attached = false;
    this.closed = false;
    this.retries = 0;
    this.sentAt = null; // when the oldest unanswered keystroke left: the latency badge
    this.received = 0;
    this.ctrl = false;
    this.build(container, note);
    if (log) this.loadLog();
    else this.connect();
  }

  build(container, note) {
    this.root = node("section", "terminal-view view");
    this.root.dataset.job = this.jobId;
    const bar = node("div", "term-bar");
    this.title = node("strong", "", `job ${this.jobId}`);
    this.stateBadge = node("span", "badge state", note || "connecting");
    this.latency = node("span", "badge latency", "– ms");
    this.latency.title = "input round trip: a key typed until its echo is back";
    bar.append(this.title, this.stateBadge);
    if (this.readOnly) bar.append(node("span", "badge ro", "read-only"));
    else bar.append(this.latency);
    this.searchBox = node("input", "search");
    this.searchBox.placeholder = "search scrollback";
    this.searchBox.addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.search.findNext(this.searchBox.value);
    });
    const capture = node("button", "capture-keys", "Capture keys");
    capture.title = "fullscreen: Ctrl-W and friends go to the job (Esc Esc leaves)";
    capture.addEventListener("click", () => this.capture(true));
    bar.append(this.searchBox);
    if (!this.readOnly) {
      const cancel = node("button", "cancel-job", "Cancel job");
      cancel.title = "SIGTERM, a grace period, then SIGKILL (as runlet cancel)";
      cancel.addEventListener("click", () => this.cancel());
      bar.append(capture, cancel);
    }
    this.banner = node("div", "banner");
    this.banner.hidden = true;
    this.player = node("div", "player");
    this.player.hidden = true;
    const speed = node("select", "speed");
    for (const [label, value] of [["at once", 0], ["real time", 1], ["2×", 2], ["5×", 5], ["20×", 20]]) {
      const option = node("option", "", label);
      option.value = String(value);
      speed.append(option);
    }
    const replay = node("button", "replay", "Play");
    replay.addEventListener("click", () => this.play(Number(speed.value)));
    this.player.append(node("span", "muted", "playback"), speed, replay);
    bar.append(this.player);
    this.host = node("div", "term-host");
    const keybar = node("div", "keybar");
    for (const [label, seq] of Object.entries(KEYS)) {
      const key = node("button", "", label);
      key.addEventListener("click", () => { this.type(seq); this.term.focus(); });
      keybar.append(key);
    }
    this.ctrlKey = node("button", "", "Ctrl");
    this.ctrlKey.addEventListener("click", () => {
      this.ctrl = !this.ctrl;
      this.ctrlKey.classList.toggle("active", this.ctrl);
      this.term.focus();
    });
    keybar.append(this.ctrlKey);
    this.root.append(bar, this.banner, this.host, keybar);
    container.append(this.root);

    this.term = new Terminal({
      allowProposedApi: true, cursorBlink: true, scrollback: 10000, convertEol: false,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
      disableStdin: this.readOnly,
    });
    this.fit = new FitAddon();
    this.search = new SearchAddon();
    this.term.loadAddon(this.fit);
    this.term.loadAddon(this.search);
    this.term.loadAddon(new WebLinksAddon());
    this.term.loadAddon(new Unicode11Addon());
    this.term.unicode.activeVersion = "11";
    this.applyLook();
    this.term.open(this.host);
    this.term.onData((data) => this.type(this.ctrl ? this.ctrlOf(data) : data));
    this.term.attachCustomKeyEventHandler((e) => this.clipboardKey(e));
    this.host.addEventListener("contextmenu", (e) => this.rightClick(e));
    this.resizer = new ResizeObserver(() => this.refit());
    this.resizer.observe(this.host);
    this.term.onResize(({ rows, cols }) => this.sendControl({ type: "resize", rows, cols }));
  }

  applyLook() {
    const dark = document.documentElement.classList.contains("dark");
    this.term.options.theme = dark ? DARK : LIGHT;
    this.term.options.fontSize = TerminalTab.fontSize();
    this.refit();
  }

  refit() {
    if (this.root.hidden || !this.host.clientWidth) return;
    try { this.fit.fit(); } catch { /* not laid out yet */ }
  }

  show(visible) {
    this.root.hidden = !visible;
    if (visible) { this.refit(); this.term.focus(); }
  }

  // -- a finished job's log ------------------------------------------------------------------

  async loadLog() {
    this.stateBadge.textContent = "loading the log";
    const response = await fetch(`/api/logs/${encodeURIComponent(this.jobId)}`, { credentials: "same-origin" });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (response.ok && !body.stored) {
      this.stateBadge.textContent = "no stored copy: replaying from its node";
      this.connect(); // the node that ran it still holds it in its vault
      return;
    }
    if (!response.ok) {
      this.stateBadge.textContent = body.error;
      this.stateBadge.classList.add("bad");
      return;
    }
    this.log = body;
    this.stateBadge.textContent = `log · ${body.chunks.length} chunks · ${body.intact ? "verified" : "damaged"}`;
    if (body.problems.length) {
      this.banner.replaceChildren(...body.problems.map((p) => node("div", "", p)));
      this.banner.hidden = false;
    }
    this.player.hidden = false;
    this.play(0);
  }

  async play(speed) {
    const run = (this.playing = {});
    this.term.reset();
    let last = null;
    for (const [, t, data] of this.log.chunks) {
      if (speed > 0 && last !== null) {
        const pause = Math.min(Math.max(0, (t - last) / speed), 2) * 1000;
        if (pause > 0) await new Promise((r) => setTimeout(r, pause));
        if (this.playing !== run) return; // another play started, or the tab closed
      }
      last = t;
      this.term.write(Uint8Array.from(atob(data), (c) => c.charCodeAt(0)));
    }
    this.stateBadge.dataset.played = String(speed);
  }

  // -- the connection ------------------------------------------------------------------------

  connect() {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.decoder = decoder();
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "attach", job_id: this.jobId, read_only: this.readOnly, from_seq: this.nextSeq }));
      this.sendControl({ type: "resize", rows: this.term.rows, cols: this.term.cols });
    });
    ws.addEventListener("message", (event) => this.onMessage(event));
    ws.addEventListener("close", (event) => this.onClose(event));
  }

  onMessage(event) {
    if (typeof event.data === "string") return this.onControl(JSON.parse(event.data));
    const frame = new Uint8Array(event.data);
    const idLength = frame[0];
    const view = new DataView(event.data, 1 + idLength, 8);
    const seq = Number(view.getBigUint64(0));
    if (seq !== this.nextSeq) return; // the bridge sends in order; anything else is a stale socket
    this.nextSeq = seq + 1;
    this.received += frame.length;
    this.term.write(frame.subarray(1 + idLength + 8));
    if (this.sentAt !== null) {
      this.latency.textContent = `${Math.round(performance.now() - this.sentAt)} ms`;
      this.sentAt = null;
    }
  }

  onControl(msg) {
    if (msg.type === "attached") {
      this.attached = true;
      this.retries = 0;
      this.stateBadge.textContent = this.state ? this.state.state : "attached";
    } else if (msg.type === "state") {
      this.state = msg;
      this.stateBadge.textContent = msg.status === null ? `${msg.state} on ${msg.node}` : `${msg.state} · status ${msg.status}`;
      this.stateBadge.className = `badge state state-${msg.state}`;
      if (msg.status !== null) this.attached = false;
    } else if (msg.type === "error") {
      this.stateBadge.textContent = msg.message;
      this.stateBadge.classList.add("bad");
      clearTimeout(this.unbad);
      this.unbad = setTimeout(() => this.stateBadge.classList.remove("bad"), 4000);
    }
  }

  onClose(event) {
    this.attached = false;
    if (this.closed || event.code === 4400) return;
    if (this.state && this.state.status !== null) return; // the end is shown
    this.retries += 1;
    this.stateBadge.textContent = "reconnecting…";
    const delay = Math.min(5000, 200 * 2 ** Math.min(this.retries, 5));
    setTimeout(() => { if (!this.closed) this.connect(); }, delay);
  }

  type(data) {
    if (this.readOnly || !this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    if (this.sentAt === null) this.sentAt = performance.now();
    this.ws.send(new TextEncoder().encode(data));
  }

  sendControl(frame) {
    if (this.readOnly || !this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(JSON.stringify(frame));
  }

  async cancel() {
    const response = await fetch(`/api/jobs/${encodeURIComponent(this.jobId)}/cancel`, {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" }, body: "{}",
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      this.onControl({ type: "error", message: body.error });
    }
  }

  ctrlOf(data) {
    this.ctrl = false;
    this.ctrlKey.classList.remove("active");
    const code = data.toUpperCase().charCodeAt(0);
    return code >= 64 && code < 96 ? String.fromCharCode(code - 64) : data;
  }

  // -- clipboard and keys --------------------------------------------------------------------

  clipboardKey(e) {
    if (e.type !== "keydown") return true;
    const copy = e.ctrlKey && e.shiftKey && e.code === "KeyC";
    const paste = (e.ctrlKey && e.shiftKey && e.code === "KeyV") || (e.shiftKey && e.key === "Insert");
    if (copy) {
      navigator.clipboard?.writeText(this.term.getSelection()).catch(() => {});
      return false;
    }
    if (paste) {
      navigator.clipboard?.readText().then((text) => this.type(text)).catch(() => {});
      return false;
    }
    if (this.capturing && e.key === "Escape") {
      const now = performance.now();
      if (this.lastEscape && now - this.lastEscape < 800) { this.capture(false); return false; }
      this.lastEscape = now;
    }
    return true;
  }

  rightClick(e) {
    e.preventDefault();
    const selection = this.term.getSelection();
    if (selection) navigator.clipboard?.writeText(selection).catch(() => {});
    else navigator.clipboard?.readText().then((text) => this.type(text)).catch(() => {});
  }

  capture(on) {
    this.capturing = on;
    this.root.classList.toggle("capture", on);
    if (on) this.host.requestFullscreen?.().catch(() => {});
    else if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    navigator.keyboard?.lock?.().catch(() => {});
    this.refit();
    this.term.focus();
  }

  screenText() {
    const buffer = this.term.buffer.active;
    const lines = [];
    for (let y = 0; y < this.term.rows; y++) {
      lines.push(buffer.getLine(buffer.viewportY + y)?.translateToString(true) ?? "");
    }
    return lines.join("\n");
  }

  allText() {
    const buffer = this.term.buffer.active;
    const lines = [];
    for (let y = 0; y < buffer.length; y++) {
      lines.push(buffer.getLine(y)?.translateToString(true) ?? "");
    }
    return lines.join("\n");
  }

  dispose() {
    this.closed = true;
    this.playing = null;
    this.resizer.disconnect();
    this.ws?.close();
    this.term.dispose();
    this.root.remove();
  }
}
