// The signalling socket (docs/protocol.md): hello, requests with ids and
// replies, server events, and reconnection with `resume` after a drop.
//
// Events dispatched (CustomEvent, message in `detail`):
//   every server event by its type ("visit.position", "room.event", ...);
//   "ready" (hello.ok, also after a resume), "connection" ({state}: connecting,
//   open, reconnecting, closed), "auth-failed" ({code, message}).

export const PROTOCOL_VERSION = 1;

export class RequestError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000];

export class Signalling extends EventTarget {
  constructor(token, { url } = {}) {
    super();
    this.token = token;
    this.url = url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    this.ws = null;
    this.session = null;
    this.hello = null;
    this.state = "idle";
    this.nextId = 1;
    this.pending = new Map();
    this.attempt = 0;
    this.stopped = false;
    this.clockOffset = 0; // server time - local time, in seconds
  }

  /** Connect and say hello; resolves with hello.ok, rejects with RequestError on refusal. */
  connect() {
    this.stopped = false;
    return new Promise((resolve, reject) => {
      this._open(resolve, reject);
    });
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("connection", { detail: { state } }));
  }

  _open(resolve, reject) {
    this._setState(this.session ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this._scheduleReconnect(resolve, reject);
      return;
    }
    this.ws = ws;
    let greeted = false;
    const sayHello = () => {
      // presence "own": no page shows other physicians' status live (the admin console reads
      // presence.list), and every physician's changes to every page flooded them at scale.
      const hello = { type: "hello", id: this._id(), version: PROTOCOL_VERSION, token: this.token, presence: "own" };
      if (this.session) hello.resume = this.session;
      this.pending.set(hello.id, {
        resolve: (ok) => {
          greeted = true;
          this.attempt = 0;
          this.session = ok.session;
          this.hello = ok;
          if (typeof ok.server_time === "number") this.clockOffset = ok.server_time - Date.now() / 1000;
          this._setState("open");
          this.dispatchEvent(new CustomEvent("ready", { detail: ok }));
          resolve?.(ok);
          resolve = reject = null;
        },
        reject: (err) => {
          if (err.code === "disconnected") return;
          if (err.code === "auth_failed" || err.code === "token_expired" || err.code === "unsupported_version") {
            this.stopped = true;
            this.dispatchEvent(new CustomEvent("auth-failed", { detail: { code: err.code, message: err.message } }));
            reject?.(err);
            resolve = reject = null;
          } else if (hello.resume && ws.readyState === WebSocket.OPEN) {
            // The session could not be resumed (grace passed): start afresh.
            this.session = null;
            sayHello();
          }
        },
      });
      this._send(hello);
    };
    ws.addEventListener("open", sayHello);
    ws.addEventListener("message", (event) => this._receive(event.data));
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const [, waiter] of this.pending) waiter.reject(new RequestError("disconnected", "connection lost"));
      this.pending.clear();
      if (event.code === 4401) {
        const already = this.stopped;
        this.stopped = true;
        this._setState("closed");
        if (!already) {
          this.dispatchEvent(new CustomEvent("auth-failed", { detail: { code: "token_expired", message: event.reason } }));
        }
        reject?.(new RequestError("auth_failed", event.reason));
        return;
      }
      if (this.stopped) {
        this._setState("closed");
        if (!greeted) reject?.(new RequestError("closed", "connection closed"));
        return;
      }
      this._scheduleReconnect(resolve, reject);
    });
  }

  _scheduleReconnect(resolve, reject) {
    this._setState("reconnecting");
    // Drawn in [d/2, d]: every page of a process that went away lost its socket at the same
    // instant, and must not all come back at the same instants too (core/backoff.py).
    const full = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = full * (1 - Math.random() / 2);
    this.attempt += 1;
    setTimeout(() => {
      if (!this.stopped) this._open(resolve, reject);
    }, delay);
  }

  _id() {
    return `r${this.nextId++}`;
  }

  _send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) throw new RequestError("disconnected", "not connected");
    this.ws.send(JSON.stringify(message));
  }

  _receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (!message || typeof message.type !== "string") return;
    if (message.id !== undefined && message.id !== null && this.pending.has(message.id)) {
      const waiter = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (message.type === "error") waiter.reject(new RequestError(message.code, message.message));
      else waiter.resolve(message);
      return;
    }
    if (message.type === "error") {
      if (message.code === "token_expired" || message.code === "auth_failed") {
        this.stopped = true;
        this.dispatchEvent(new CustomEvent("auth-failed", { detail: { code: message.code, message: message.message } }));
      }
      this.dispatchEvent(new CustomEvent("server-error", { detail: message }));
      return;
    }
    this.dispatchEvent(new CustomEvent(message.type, { detail: message }));
  }

  /** Send a request; resolves with its reply, rejects with RequestError (error.code). */
  request(type, fields = {}, { timeoutMs = 15000 } = {}) {
    return new Promise((resolve, reject) => {
      const id = this._id();
      try {
        this._send({ type, id, ...fields });
      } catch (err) {
        reject(err);
        return;
      }
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) reject(new RequestError("timeout", `${type}: no reply`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (reply) => { clearTimeout(timer); resolve(reply); },
        reject: (err) => { clearTimeout(timer); reject(err); },
      });
    });
  }

  /** Wait until the socket is open again (after a drop); resolves at once when it is. */
  whenOpen() {
    if (this.state === "open") return Promise.resolve();
    return new Promise((resolve) => {
      const listener = () => {
        this.removeEventListener("ready", listener);
        resolve();
      };
      this.addEventListener("ready", listener);
    });
  }

  /** Server's Unix time now, from the offset measured at hello. */
  serverNow() {
    return Date.now() / 1000 + this.clockOffset;
  }

  on(type, listener) {
    this.addEventListener(type, (event) => listener(event.detail));
  }

  close() {
    this.stopped = true;
    this.ws?.close(1000);
  }
}
