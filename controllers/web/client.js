// worldsim browser client: protocol v1 over WebSocket (docs/protocol.md). No build step.
// Keys use KeyboardEvent.code (physical keys), the same names as the pygame client's bindings,
// which the server sends in `welcome`.
"use strict";

(() => {
  const PROTOCOL_VERSION = 1;
  const $ = (id) => document.getElementById(id);
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const params = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));

  // State visible to tests and curious users (window.worldsim).
  const state = {
    status: "connecting", session: null, welcome: null, framesDrawn: 0, framesReceived: 0,
    lastFrameSeq: 0, lastInputSeq: null, inputSeq: 0, errors: [], fps: 0, latencyMs: null,
    inputLatencyMs: null, rttMs: null, paused: false, held: [], action: "noop",
  };
  window.worldsim = state;

  let ws = null;
  let keymap = {};        // code -> action name
  let commandKeys = {};   // code -> command name
  let held = [];          // held action key codes, oldest press first
  let sentAt = new Map(); // input seq -> performance.now() when sent
  let backoff = 500;
  let reconnectTimer = null;
  let pingTimer = null;
  let rewindTimer = null;
  let decoding = false;
  let pendingFrame = null; // latest frame waiting for the decoder (older ones are dropped)
  const frameTimes = [];

  function setStatus(s, text) {
    state.status = s;
    const el = $("status");
    el.className = "status " + s;
    el.dataset.state = s;
    el.textContent = text || s;
  }

  function notice(text) {
    const el = $("notice");
    el.hidden = !text;
    el.textContent = text || "";
  }

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(MsgPack.encode(msg));
  }

  function connect() {
    clearTimeout(reconnectTimer);
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    setStatus(state.session ? "reconnecting" : "connecting");
    ws.onopen = () => {
      const hello = { type: "hello", version: PROTOCOL_VERSION, format: params.get("format") || "png" };
      if (params.get("token")) hello.token = params.get("token");
      if (params.get("seed")) hello.seed = parseInt(params.get("seed"), 10);
      ws.send(MsgPack.encode(hello));
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = MsgPack.decode(ev.data); } catch (e) { console.warn("bad message from server", e); return; }
      onMessage(msg);
    };
    ws.onclose = (ev) => {
      clearInterval(pingTimer);
      stopRewind();
      if (ev.code === 4401) { setStatus("closed", "unauthorized (add #token=… to the URL)"); return; }
      if (ev.code === 4408) {
        setStatus("closed", "idle: disconnected");
        notice("Disconnected after being idle. Press any key or click to reconnect.");
        return;
      }
      setStatus("reconnecting", `disconnected (${ev.code}); retrying in ${(backoff / 1000).toFixed(1)} s`);
      reconnectTimer = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 8000);
    };
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "welcome": return onWelcome(msg);
      case "frame": return onFrame(msg);
      case "error":
        state.errors.push(msg);
        console.warn("server error:", msg.code, msg.message);
        if (msg.code === "server_full") notice("The server is full; retrying…");
        else if (msg.code !== "rate_limited") notice(`${msg.code}: ${msg.message}`);
        return;
      case "ack":
        if (msg.of === "pause") { state.paused = msg.paused; $("btn-pause").textContent = msg.paused ? "Resume" : "Pause"; }
        if (msg.of === "snapshot") notice("state saved");
        if (msg.of === "restore") notice("state loaded");
        if (msg.of === "reset") notice(`new start (seed ${msg.seed})`);
        setTimeout(() => notice(""), 1500);
        return;
      case "pong":
        if (typeof msg.t === "number") state.rttMs = performance.now() - msg.t;
        $("rtt").textContent = `rtt ${state.rttMs.toFixed(0)} ms`;
        return;
    }
  }

  function onWelcome(msg) {
    state.welcome = msg;
    state.session = msg.session;
    backoff = 500;
    const [h, w] = msg.frame_shape;
    canvas.width = w;
    canvas.height = h;
    keymap = {};
    commandKeys = {};
    for (const [name, codes] of Object.entries(msg.bindings.actions)) for (const c of codes) keymap[c] = name;
    for (const [name, codes] of Object.entries(msg.bindings.commands)) for (const c of codes) commandKeys[c] = name;
    buildHelp(msg.bindings);
    held = [];
    sentAt = new Map();
    state.lastFrameSeq = 0; // frame seqs restart with each session
    state.lastInputSeq = null;
    setStatus("connected", `connected · session ${msg.session}`);
    notice("");
    clearInterval(pingTimer);
    // Pings measure the round trip and keep a visible tab's session from idling out.
    const ping = () => { if (!document.hidden) send({ type: "ping", t: performance.now() }); };
    pingTimer = setInterval(ping, 5000);
    ping();
    canvas.focus();
  }

  function onFrame(msg) {
    state.framesReceived++;
    if (msg.seq <= state.lastFrameSeq) return; // stale
    state.lastFrameSeq = msg.seq;
    pendingFrame = msg;
    if (!decoding) drawPending();
  }

  async function drawPending() {
    decoding = true;
    while (pendingFrame) {
      const msg = pendingFrame;
      pendingFrame = null;
      try {
        const blob = new Blob([msg.data], { type: msg.format === "jpeg" ? "image/jpeg" : "image/png" });
        const bitmap = await createImageBitmap(blob);
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
        bitmap.close();
      } catch (e) {
        console.warn("could not decode frame", e);
        continue;
      }
      const now = performance.now();
      state.framesDrawn++;
      state.latencyMs = msg.latency_ms;
      state.action = msg.action;
      frameTimes.push(now);
      while (frameTimes.length > 1 && now - frameTimes[0] > 2000) frameTimes.shift();
      // over at least half a second: the first frames of a session arrive back to back
      const span = now - frameTimes[0];
      if (span >= 500) state.fps = (frameTimes.length - 1) * 1000 / span;
      if (msg.input_seq !== null && msg.input_seq !== undefined) {
        // Input-to-display latency: the first frame drawn that was generated after input `seq` was read.
        if (state.lastInputSeq === null || msg.input_seq > state.lastInputSeq) {
          const t = sentAt.get(msg.input_seq);
          if (t !== undefined) state.inputLatencyMs = now - t;
          for (const k of sentAt.keys()) if (k <= msg.input_seq) sentAt.delete(k);
        }
        state.lastInputSeq = Math.max(state.lastInputSeq ?? -1, msg.input_seq);
      }
      $("fps").textContent = `${state.fps.toFixed(1)} fps`;
      $("latency").textContent = `server ${msg.latency_ms.toFixed(0)} ms`;
      if (state.inputLatencyMs !== null) $("input-latency").textContent = `key→frame ${state.inputLatencyMs.toFixed(0)} ms`;
      $("action").textContent = msg.action;
    }
    decoding = false;
  }

  function sendHeld() {
    state.inputSeq++;
    state.held = held.slice();
    sentAt.set(state.inputSeq, performance.now());
    if (sentAt.size > 256) sentAt.delete(sentAt.keys().next().value);
    send({ type: "input", seq: state.inputSeq, keys: held });
  }

  function startRewind() {
    if (rewindTimer) return;
    send({ type: "rewind", steps: 1 });
    const hz = state.welcome ? state.welcome.tick_hz : 5;
    rewindTimer = setInterval(() => send({ type: "rewind", steps: 1 }), 1000 / hz);
  }

  function stopRewind() {
    clearInterval(rewindTimer);
    rewindTimer = null;
  }

  function command(name) {
    switch (name) {
      case "help": $("help").hidden = !$("help").hidden; break;
      case "pause": send({ type: "pause", paused: !state.paused }); break;
      case "reset": send({ type: "reset" }); break;
      case "save": send({ type: "snapshot", name: "quick" }); break;
      case "load": send({ type: "restore", name: "quick" }); break;
      case "screenshot": screenshot(); break;
      case "rewind": send({ type: "rewind", steps: 1 }); break;
      default: return false; // record/quit belong to the desktop client
    }
    return true;
  }

  function screenshot() {
    const a = document.createElement("a");
    a.download = `worldsim-${state.session}-${state.lastFrameSeq}.png`;
    a.href = canvas.toDataURL("image/png");
    a.click();
  }

  function buildHelp(bindings) {
    const label = (c) => c.replace(/^(Key|Digit|Arrow)(?=.)/, "");
    const browserCommands = new Set(["help", "pause", "reset", "save", "load", "screenshot", "rewind"]);
    const fill = (table, rows) => {
      table.textContent = "";
      for (const [name, codes] of rows) {
        const tr = table.insertRow();
        tr.insertCell().textContent = name.replace(/_/g, " ");
        tr.insertCell().textContent = codes.map(label).join(", ");
      }
    };
    fill($("help-actions"), Object.entries(bindings.actions));
    fill($("help-commands"), Object.entries(bindings.commands).filter(([n]) => browserCommands.has(n)));
  }

  window.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return; // leave browser shortcuts alone
    if (state.status === "closed") { backoff = 500; connect(); return; }
    const cmd = commandKeys[ev.code];
    if (cmd === "rewind") { ev.preventDefault(); if (!ev.repeat) startRewind(); return; }
    if (cmd !== undefined) {
      if (!ev.repeat && command(cmd)) ev.preventDefault();
      return;
    }
    if (keymap[ev.code] === undefined) return;
    ev.preventDefault(); // Space scrolls, Tab moves focus, arrows scroll
    if (ev.repeat) return; // held keys are state, not a stream of events
    held = held.filter((c) => c !== ev.code);
    held.push(ev.code);
    sendHeld();
  });

  window.addEventListener("keyup", (ev) => {
    if (commandKeys[ev.code] === "rewind") { stopRewind(); return; }
    if (!held.includes(ev.code)) return;
    held = held.filter((c) => c !== ev.code);
    sendHeld();
  });

  // Keys released while the page has no focus never send keyup: release everything.
  window.addEventListener("blur", () => { stopRewind(); if (held.length) { held = []; sendHeld(); } });
  document.addEventListener("visibilitychange", () => { if (document.hidden && held.length) { held = []; sendHeld(); } });

  $("btn-pause").onclick = () => command("pause");
  $("btn-rewind").onclick = () => command("rewind");
  $("btn-reset").onclick = () => command("reset");
  $("btn-snapshot").onclick = () => command("save");
  $("btn-restore").onclick = () => command("load");
  $("btn-shot").onclick = () => command("screenshot");
  $("btn-help").onclick = () => command("help");
  canvas.addEventListener("click", () => { canvas.focus(); if (state.status === "closed") { backoff = 500; connect(); } });

  connect();
})();
