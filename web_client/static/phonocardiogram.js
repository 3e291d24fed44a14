// A live phonocardiogram: the received stethoscope audio through a WebAudio
// AnalyserNode, drawn on a canvas as a scrolling time-domain trace (min/max
// envelope per pixel column, newest on the right).
export class Phonocardiogram {
  constructor(canvas, track, { seconds = 4 } = {}) {
    this.canvas = canvas;
    this.seconds = seconds;
    this.context = new AudioContext();
    this.source = this.context.createMediaStreamSource(new MediaStream([track]));
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 8192;
    this.source.connect(this.analyser); // analysis only: playback is the <audio> element
    this.buffer = new Float32Array(this.analyser.fftSize);
    this.columns = [];
    this.pending = { min: Infinity, max: -Infinity, count: 0 };
    this.lastTime = null;
    this.peak = 0; // largest |sample| seen, for tests and the "no signal" hint
    this.columnsDrawn = 0;
    this.scale = 1;
    this.running = true;
    this.context.resume().catch(() => {});
    // Autoplay policy: resume on the first gesture, unless this panel closed meanwhile.
    this.resumeOnGesture = () => {
      if (this.context.state !== "closed") this.context.resume().catch(() => {});
    };
    document.addEventListener("pointerdown", this.resumeOnGesture, { once: true });
    document.addEventListener("keydown", this.resumeOnGesture, { once: true });
    this._frame = this._frame.bind(this);
    requestAnimationFrame(this._frame);
  }

  get width() {
    return this.canvas.width;
  }

  _frame(now) {
    if (!this.running) return;
    const rate = this.context.sampleRate;
    const perColumn = Math.max(1, Math.round((rate * this.seconds) / this.width));
    const elapsed = this.lastTime === null ? 0 : (now - this.lastTime) / 1000;
    this.lastTime = now;
    const fresh = Math.min(this.buffer.length, Math.round(elapsed * rate));
    if (fresh > 0 && this.context.state === "running") {
      this.analyser.getFloatTimeDomainData(this.buffer);
      for (let i = this.buffer.length - fresh; i < this.buffer.length; i += 1) {
        const v = this.buffer[i];
        const p = this.pending;
        if (v < p.min) p.min = v;
        if (v > p.max) p.max = v;
        p.count += 1;
        if (p.count >= perColumn) {
          this.columns.push([p.min, p.max]);
          this.peak = Math.max(this.peak, Math.abs(p.min), Math.abs(p.max));
          this.pending = { min: Infinity, max: -Infinity, count: 0 };
          this.columnsDrawn += 1;
        }
      }
      if (this.columns.length > this.width) this.columns.splice(0, this.columns.length - this.width);
    }
    this._draw();
    requestAnimationFrame(this._frame);
  }

  _draw() {
    const { canvas } = this;
    const ctx = canvas.getContext("2d");
    const w = canvas.width;
    const hgt = canvas.height;
    ctx.fillStyle = "#0f1b24";
    ctx.fillRect(0, 0, w, hgt);
    ctx.strokeStyle = "#23384a";
    ctx.lineWidth = 1;
    for (let s = 1; s < this.seconds; s += 1) {
      const x = Math.round((w * s) / this.seconds) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, 0);
      ctx.lineTo(x, hgt);
      ctx.stroke();
    }
    ctx.beginPath();
    ctx.moveTo(0, hgt / 2 + 0.5);
    ctx.lineTo(w, hgt / 2 + 0.5);
    ctx.stroke();
    // Automatic scale: the loudest of the shown window fills 90 % of the height.
    let loudest = 0.02;
    for (const [mn, mx] of this.columns) loudest = Math.max(loudest, -mn, mx);
    this.scale = (0.9 * hgt) / 2 / loudest;
    ctx.strokeStyle = "#5ee0a0";
    ctx.beginPath();
    const offset = w - this.columns.length;
    this.columns.forEach(([mn, mx], i) => {
      const x = offset + i + 0.5;
      ctx.moveTo(x, hgt / 2 - mx * this.scale);
      ctx.lineTo(x, hgt / 2 - mn * this.scale + 1);
    });
    ctx.stroke();
  }

  close() {
    this.running = false;
    document.removeEventListener("pointerdown", this.resumeOnGesture);
    document.removeEventListener("keydown", this.resumeOnGesture);
    this.source.disconnect();
    this.context.close().catch(() => {});
  }
}
