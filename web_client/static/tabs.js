// One call per person and browser: the tab in a consultation holds a Web Lock
// for it; another tab of the same person sees it is held and says so, instead of
// joining silently with no camera. "Use this tab" asks the holder (over a
// BroadcastChannel) to hand the call over, then waits for the lock.

export class CallLock {
  constructor(name) {
    this.name = name;
    this.releaseLock = null;
    this.channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(name) : null;
    this.onAsked = null;
    this.channel?.addEventListener("message", (event) => {
      if (event.data?.type === "take-over" && this.releaseLock) this.onAsked?.();
    });
  }

  get held() {
    return this.releaseLock !== null;
  }

  /**
   * Hold the lock; false when another tab still holds it after ``patienceMs`` (a page that
   * reloads lets go of it a moment after the new one asks), or, with ``wait``, once it is free.
   */
  acquire({ wait = false, patienceMs = 2000 } = {}) {
    if (this.releaseLock) return Promise.resolve(true);
    if (!navigator.locks) return Promise.resolve(true); // nothing to coordinate with
    const options = wait ? {} : { signal: AbortSignal.timeout(patienceMs) };
    return new Promise((resolve) => {
      navigator.locks.request(this.name, options, (lock) => {
        if (!lock) {
          resolve(false);
          return undefined;
        }
        return new Promise((release) => {
          this.releaseLock = release;
          resolve(true);
        });
      }).catch(() => resolve(false)); // the patience ran out: another tab has it
    });
  }

  release() {
    this.releaseLock?.();
    this.releaseLock = null;
  }

  /** Ask the tab holding the lock to let go. */
  askToLeave() {
    this.channel?.postMessage({ type: "take-over" });
  }

  /** ``fn`` runs when another tab asks this one (holding the lock) to let go. */
  whenAskedToLeave(fn) {
    this.onAsked = fn;
  }
}
