// AudioWorklet: hands the microphone's samples (first channel, Float32, at the context's rate)
// to the page in blocks of about 20 ms rather than one message per 128-sample render quantum.
class PcmTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(Math.max(128, Math.round(sampleRate / 50)));
    this.n = 0;
    this.port.onmessage = (e) => { if (e.data === "flush") { this.flush(); this.port.postMessage("flushed"); } };
  }

  flush() {
    if (this.n) this.port.postMessage(this.block.slice(0, this.n));
    this.n = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        this.block[this.n++] = channel[i];
        if (this.n === this.block.length) this.flush();
      }
    }
    return true;
  }
}

registerProcessor("pcm-tap", PcmTap);
