// The ring of an incoming offer: a soft two-tone chime every two seconds (WebAudio).
export class Ringer {
  constructor() {
    this.context = null;
    this.timer = null;
  }

  _chime() {
    const ctx = this.context;
    const now = ctx.currentTime;
    [[660, 0], [880, 0.18]].forEach(([freq, at]) => {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "sine";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0, now + at);
      gain.gain.linearRampToValueAtTime(0.2, now + at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.001, now + at + 0.35);
      osc.connect(gain).connect(ctx.destination);
      osc.start(now + at);
      osc.stop(now + at + 0.4);
    });
  }

  start() {
    if (this.timer) return;
    try {
      this.context ||= new AudioContext();
      this.context.resume().catch(() => {});
      this._chime();
      this.timer = setInterval(() => this._chime(), 2000);
    } catch (_) { /* no audio output: the visual ring remains */ }
  }

  get ringing() {
    return this.timer !== null;
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }
}
