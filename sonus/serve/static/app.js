// sonus page: microphone -> 16 kHz 16-bit PCM over the WebSocket, partial and final results shown;
// or an uploaded file -> POST /v1/transcribe.
"use strict";

const RATE = 16000; // what the server takes
const CHUNK = 2560; // samples per frame sent (160 ms)
const WORKLET = "/static/pcm-worklet.js";
const STEP_TIMEOUT_MS = 10000; // worklet, audio context, WebSocket
const MIC_TIMEOUT_MS = 60000; // getUserMedia: the user may be reading a permission prompt
const SILENT_MS = 3000; // no samples from the microphone for this long after the start: an error
const FINAL_TIMEOUT_MS = 60000; // after Stop, until the final result
const UPLOAD_TIMEOUT_MS = 600000;
// A recognizer wants the raw signal: no echo cancellation, noise suppression or automatic gain.
const MIC = { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false };
const $ = (id) => document.getElementById(id);

/** Streaming windowed-sinc resampler (Blackman window, 24 zero crossings, cut-off at 0.47 x the
 * lower rate: from 44.1/48 kHz to 16 kHz it is flat to 6.5 kHz, -6 dB at 7.5 kHz, and nothing
 * aliases audibly). It keeps its state across blocks: the output does not depend on how the input
 * was cut into blocks. */
class Resampler {
  constructor(inRate, outRate = RATE, zeros = 24, table = 64) {
    this.step = inRate / outRate; // input samples per output sample
    const fc = (0.47 * Math.min(inRate, outRate)) / inRate; // cut-off, cycles per input sample
    this.half = zeros / (2 * fc); // kernel half-width, input samples
    this.res = table; // kernel table entries per input sample
    this.kernel = new Float32Array(Math.ceil(this.half * table) + 2);
    for (let i = 0; i < this.kernel.length; i++) {
      const tau = i / table, x = tau / this.half;
      if (x >= 1) continue;
      const sinc = tau === 0 ? 1 : Math.sin(2 * Math.PI * fc * tau) / (2 * Math.PI * fc * tau);
      this.kernel[i] = 2 * fc * sinc * (0.42 + 0.5 * Math.cos(Math.PI * x) + 0.08 * Math.cos(2 * Math.PI * x));
    }
    const pad = Math.ceil(this.half) + 1; // zeros before the first sample
    this.buf = new Float32Array(pad);
    this.start = -pad; // input index of buf[0]
    this.n = 0; // next output sample
    this.total = 0; // input samples pushed
  }

  weight(tau) {
    const p = Math.abs(tau) * this.res, i = Math.floor(p);
    return i + 1 < this.kernel.length ? this.kernel[i] + (p - i) * (this.kernel[i + 1] - this.kernel[i]) : 0;
  }

  append(block) {
    const buf = new Float32Array(this.buf.length + block.length);
    buf.set(this.buf);
    buf.set(block, this.buf.length);
    this.buf = buf;
  }

  /** The output samples whose kernel lies within the input so far (and that fall before ``limit``). */
  drain(limit = Infinity) {
    const out = [], end = this.start + this.buf.length;
    for (let t = this.n * this.step; t + this.half < end - 1 && t < limit; t = ++this.n * this.step) {
      let sum = 0, norm = 0;
      for (let j = Math.ceil(t - this.half); j <= Math.floor(t + this.half); j++) {
        const w = this.weight(j - t);
        sum += w * this.buf[j - this.start];
        norm += w;
      }
      out.push(sum / norm);
    }
    const keep = Math.ceil(this.n * this.step - this.half) - 1 - this.start; // history still needed
    if (keep > 0) { this.buf = this.buf.slice(keep); this.start += keep; }
    return out;
  }

  push(block) { this.append(block); this.total += block.length; return this.drain(); }

  /** The rest: pads with zeros and returns the outputs up to the end of the input. */
  flush() { this.append(new Float32Array(Math.ceil(this.half) + 2)); return this.drain(this.total); }
}

function toInt16(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32767)));
  return pcm;
}

function status(text, error = false) { $("status").textContent = text; $("status").className = error ? "error" : ""; }

function token() { return $("token").value.trim(); }

function html(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

function clearResults() { $("final").textContent = ""; $("partial").textContent = ""; $("nbest").innerHTML = ""; $("words").innerHTML = ""; }

/** A final result; ``before``: the finals of earlier utterances of the same stream (the server's
 * endpointing ends utterances by itself), shown and timed together with this one. */
function showFinal(msg, before = []) {
  const all = [...before, msg];
  $("final").textContent = all.map((m) => m.text).filter(Boolean).join(" ");
  $("partial").textContent = "";
  $("nbest").innerHTML = "<tr><th>n-best</th><th>score</th></tr>" +
    (msg.nbest || []).map((h) => `<tr><td>${html(h.text)}</td><td>${h.score.toFixed(2)}</td></tr>`).join("");
  $("words").innerHTML = "<tr><th>word</th><th>start</th><th>end</th></tr>" +
    all.flatMap((m) => m.words || []).map((w) => `<tr><td>${html(w.word)}</td><td>${w.start.toFixed(2)}</td><td>${w.end.toFixed(2)}</td></tr>`).join("");
}

/** ``promise``, or an Error(``message``) after ``ms``. */
function withTimeout(promise, ms, message) {
  let timer;
  const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(message)), ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function describe(e) {
  const known = {
    NotAllowedError: "microphone access was denied (allow it in the browser's site settings and try again)",
    NotFoundError: "no microphone was found",
    NotReadableError: "the microphone could not be started (is another application using it?)",
    OverconstrainedError: "the microphone does not support the requested settings",
  };
  return (e && known[e.name]) || (e && e.message ? e.message : String(e));
}

// -- recording -------------------------------------------------------------------------------

let session = null; // the recording in progress

function idle() {
  $("record").disabled = false;
  $("stop").disabled = true;
  $("upload").disabled = false;
}

/** Stop everything ``s`` holds (microphone, audio context, socket, timers); safe to call twice. */
function release(s) {
  if (s.released) return;
  s.released = true;
  clearTimeout(s.silentTimer);
  clearTimeout(s.finalTimer);
  if (s.tap) s.tap.port.onmessage = null;
  if (s.mic) s.mic.getTracks().forEach((t) => t.stop());
  if (s.ctx.state !== "closed") s.ctx.close().catch(() => {});
  if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close();
  if (session === s) { session = null; idle(); }
}

function fail(s, message) {
  if (s.released) return;
  console.error(`sonus: ${message}`);
  status(`error: ${message}`, true);
  release(s);
}

function send(s, samples) {
  s.pending.push(...samples);
  while (s.pending.length >= CHUNK) s.ws.send(toInt16(s.pending.splice(0, CHUNK)).buffer);
}

function onSamples(s, data) {
  if (data === "flushed") { if (s.onFlushed) s.onFlushed(); return; }
  if (!s.heard) { s.heard = true; clearTimeout(s.silentTimer); }
  if (!s.stopping) send(s, s.resampler.push(data));
  else s.tail.push(data);
}

function onMessage(s, e) {
  let msg;
  try { msg = JSON.parse(e.data); } catch { return fail(s, `the server sent something that is not JSON: ${String(e.data).slice(0, 80)}`); }
  if (msg.type === "partial") $("partial").textContent = msg.text;
  else if (msg.type === "final" && msg.endpoint) {  // an utterance ended; the stream goes on
    showFinal(msg, s.segments);
    s.segments.push(msg);
  } else if (msg.type === "final") {
    s.gotFinal = true;
    showFinal(msg, s.segments);
    status(`done: ${msg.duration.toFixed(2)} s of audio`);
    release(s);
  } else if (msg.type === "error") fail(s, `the server: ${msg.message}`);
}

function onClose(s, e) {
  if (!s.gotFinal) fail(s, `the connection closed (code ${e.code}${e.reason ? `: ${e.reason}` : ""}) before the final result`);
  else release(s);
}

async function record() {
  if (session) return;
  clearResults();
  $("record").disabled = true;
  $("upload").disabled = true;
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("the browser gives the microphone only to secure pages: open this page over https:// or on http://localhost");
  }
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) throw new Error("this browser has no Web Audio API");
  // Created and resumed here, inside the click, before any await: autoplay policies let only a
  // user gesture start audio, and a context created later may stay 'suspended'.
  const ctx = new Context({ latencyHint: "interactive" });
  const s = (session = { ctx, pending: [], tail: [], segments: [] });
  const resumed = ctx.resume();

  status("opening the microphone... (allow access if the browser asks)");
  const mic = navigator.mediaDevices.getUserMedia({ audio: MIC });
  mic.then((m) => { s.mic = m; if (s.released) m.getTracks().forEach((t) => t.stop()); }, () => {});
  await withTimeout(mic, MIC_TIMEOUT_MS, `the microphone did not open within ${MIC_TIMEOUT_MS / 1000} s`);

  status("starting audio...");
  if (!ctx.audioWorklet) throw new Error("this browser has no AudioWorklet: use a current Chrome, Edge, Firefox or Safari");
  await withTimeout(ctx.audioWorklet.addModule(WORKLET), STEP_TIMEOUT_MS, `no answer within ${STEP_TIMEOUT_MS / 1000} s`)
    .catch((e) => { throw new Error(`could not load the audio worklet ${WORKLET}: ${describe(e)}`); });
  await withTimeout(resumed, STEP_TIMEOUT_MS, `the audio context did not start within ${STEP_TIMEOUT_MS / 1000} s`);
  if (ctx.state !== "running") throw new Error(`the audio context is '${ctx.state}', not running: click Record again`);

  status("connecting...");
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = (s.ws = new WebSocket(`${proto}://${location.host}/v1/stream` + (token() ? `?token=${encodeURIComponent(token())}` : "")));
  ws.binaryType = "arraybuffer";
  await withTimeout(new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`could not connect to ${proto}://${location.host}/v1/stream`));
  }), STEP_TIMEOUT_MS, `the server did not accept the WebSocket within ${STEP_TIMEOUT_MS / 1000} s`);
  if (s.released) return;
  ws.onerror = null;
  ws.onmessage = (e) => onMessage(s, e);
  ws.onclose = (e) => onClose(s, e);
  ws.send(JSON.stringify({ sample_rate: RATE, encoding: "pcm_s16le" }));

  s.resampler = new Resampler(ctx.sampleRate);
  s.source = ctx.createMediaStreamSource(s.mic);
  s.tap = new AudioWorkletNode(ctx, "pcm-tap", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: "explicit" });
  s.tap.onprocessorerror = () => fail(s, "the audio worklet failed");
  s.tap.port.onmessage = (e) => onSamples(s, e.data);
  const mute = ctx.createGain(); // the tap's output (silence) goes to the speakers so that every browser runs it
  mute.gain.value = 0;
  s.source.connect(s.tap).connect(mute).connect(ctx.destination);
  s.silentTimer = setTimeout(() => fail(s, `no sound from the microphone for ${SILENT_MS / 1000} s (audio context '${ctx.state}')`), SILENT_MS);
  $("stop").disabled = false;
  status(`recording (${ctx.sampleRate} Hz -> ${RATE} Hz)`);
}

async function stop() {
  const s = session;
  if (!s || s.stopping || !s.tap) return;
  s.stopping = true;
  $("stop").disabled = true;
  status("finishing...");
  // what the worklet still holds, then no more
  const flushed = new Promise((resolve) => { s.onFlushed = resolve; });
  s.tap.port.postMessage("flush");
  await withTimeout(flushed, 1000, "").catch(() => {});
  s.tap.port.onmessage = null;
  s.source.disconnect();
  s.mic.getTracks().forEach((t) => t.stop());
  if (s.released || s.ws.readyState !== WebSocket.OPEN) return;
  for (const block of s.tail) send(s, s.resampler.push(block));
  send(s, s.resampler.flush());
  if (s.pending.length) s.ws.send(toInt16(s.pending.splice(0)).buffer);
  s.ws.send(JSON.stringify({ event: "end" }));
  s.finalTimer = setTimeout(() => fail(s, `no final result from the server within ${FINAL_TIMEOUT_MS / 1000} s`), FINAL_TIMEOUT_MS);
}

// -- file upload -----------------------------------------------------------------------------

async function upload() {
  const file = $("file").files[0];
  if (!file) { status("error: choose an audio file first", true); return; }
  clearResults();
  $("upload").disabled = true;
  status(`transcribing ${file.name}...`);
  const form = new FormData();
  form.append("file", file);
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), UPLOAD_TIMEOUT_MS);
  try {
    const r = await fetch("/v1/transcribe", { method: "POST", body: form, headers, signal: abort.signal });
    let msg;
    try { msg = await r.json(); } catch { throw new Error(`the server answered ${r.status} ${r.statusText}`); }
    if (!r.ok) throw new Error(`the server answered ${r.status}: ${typeof msg.message === "string" ? msg.message : JSON.stringify(msg.detail ?? msg)}`);
    showFinal(msg);
    status(`done: ${file.name}, ${msg.duration.toFixed(2)} s of audio`);
  } catch (e) {
    throw e.name === "AbortError" ? new Error(`no answer from the server within ${UPLOAD_TIMEOUT_MS / 1000} s`) : e;
  } finally {
    clearTimeout(timer);
    if (!session) $("upload").disabled = false;
  }
}

$("record").onclick = () => record().catch((e) => {
  const s = session;
  if (s) fail(s, describe(e));
  else { status(`error: ${describe(e)}`, true); idle(); }
});
$("stop").onclick = () => stop().catch((e) => session && fail(session, describe(e)));
$("upload").onclick = () => upload().catch((e) => status(`error: ${describe(e)}`, true));
$("token-form").onsubmit = (e) => e.preventDefault();
