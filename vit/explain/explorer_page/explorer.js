"use strict";
// The attention explorer. Data: the JSON in #vit-data, binary arrays in #blob-<k> elements
// (base64 of zlib-deflated bytes). Text from the data is only ever set with textContent.
(() => {
  const $ = (id) => document.getElementById(id);
  const DATA = JSON.parse($("vit-data").textContent);
  const M = DATA.model;
  const GH = M.grid[0], GW = M.grid[1], P = GH * GW, N = M.tokens, PREFIX = M.prefix;
  const HEAD_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const CACHE_SIZE = 8;

  const state = { image: 0, layer: M.depth - 1, head: "mean", query: 0, pinned: 0, follow: true };
  const api = { state, ready: false, error: null, lastDrawMs: NaN, draws: 0, selectImage: null };
  window.vitExplorer = api;
  const cache = new Map();
  let current = null;  // decoded rows of the shown image

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const pct = (x) => (100 * x).toFixed(x >= 0.1 ? 1 : 2) + "%";
  const fmt = (x, digits) => (x === null || x === undefined) ? "n/a" : Number(x).toFixed(digits);

  // ---- decoding ----------------------------------------------------------------------------

  function blobBytes(ref) {
    const binary = atob($("blob-" + ref.blob).textContent);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  async function inflate(ref) {
    const stream = new Blob([blobBytes(ref)]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function loadRows(encoded) {
    const [codes, peak, prefix] = await Promise.all(
      [inflate(encoded.codes), inflate(encoded.peak), inflate(encoded.prefix)]);
    return { codes, peak: new Float32Array(peak.buffer), prefix: new Float32Array(prefix.buffer),
      scale: 1 / ((1 << encoded.bits) - 1) };
  }

  function imageRows(index) {
    if (!cache.has(index)) {
      const record = DATA.images[index];
      cache.set(index, Promise.all([loadRows(record.attention), loadRows(record.rollout)])
        .then(([attention, rollout]) => ({ attention, rollout })));
      if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value);
    }
    return cache.get(index);
  }

  // One row over the patches (values) and the prefix tokens, for row index r of the rows.
  function addRow(rows, r, patches, prefix, combine) {
    const peak = rows.peak[r] * rows.scale, base = r * P;
    for (let j = 0; j < P; j++) patches[j] = combine(patches[j], rows.codes[base + j] * peak);
    for (let k = 0; k < PREFIX; k++) prefix[k] = combine(prefix[k], rows.prefix[r * PREFIX + k]);
  }

  function attentionRow(layer, head, query) {
    const patches = new Float32Array(P), prefix = new Float32Array(PREFIX);
    const heads = typeof head === "number" ? [head] : [...Array(M.heads).keys()];
    const combine = head === "max" ? Math.max : (a, b) => a + b;
    for (const h of heads) addRow(current.attention, (layer * M.heads + h) * N + query, patches, prefix, combine);
    if (head === "mean") {
      for (let j = 0; j < P; j++) patches[j] /= M.heads;
      for (let k = 0; k < PREFIX; k++) prefix[k] /= M.heads;
    }
    return { patches, prefix };
  }

  function rolloutRow(query) {
    const patches = new Float32Array(P), prefix = new Float32Array(PREFIX);
    addRow(current.rollout, query, patches, prefix, (a, b) => a + b);
    return { patches, prefix };
  }

  // ---- drawing -----------------------------------------------------------------------------

  // Patch values -> one canvas pixel per patch, coloured from 0 (or the minimum) to the maximum.
  function paint(canvas, values, fromMinimum) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!fromMinimum) lo = 0;
    const span = hi - lo > 1e-6 * Math.max(Math.abs(lo), Math.abs(hi)) ? hi - lo : 0;
    canvas.width = GW; canvas.height = GH;
    const context = canvas.getContext("2d");
    const image = context.createImageData(GW, GH);
    for (let j = 0; j < P; j++) {
      const level = span > 0 ? Math.round((values[j] - lo) / span * 255) : 0;
      image.data.set([DATA.colormap[3 * level], DATA.colormap[3 * level + 1], DATA.colormap[3 * level + 2], 255], 4 * j);
    }
    context.putImageData(image, 0, 0);
    return { lo, hi };
  }

  function drawGridLines(canvas) {
    const rect = canvas.getBoundingClientRect(), ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(rect.width * ratio); canvas.height = Math.round(rect.height * ratio);
    const context = canvas.getContext("2d");
    context.strokeStyle = "rgba(255,255,255,0.35)"; context.lineWidth = 1;
    context.beginPath();
    for (let c = 1; c < GW; c++) { const x = Math.round(c * canvas.width / GW) + 0.5; context.moveTo(x, 0); context.lineTo(x, canvas.height); }
    for (let r = 1; r < GH; r++) { const y = Math.round(r * canvas.height / GH) + 0.5; context.moveTo(0, y); context.lineTo(canvas.width, y); }
    context.stroke();
  }

  function placeMarker(stage, query) {
    const marker = stage.querySelector(".marker");
    if (query < PREFIX) { marker.style.display = "none"; return; }
    const patch = query - PREFIX;
    marker.style.display = "block";
    marker.style.left = (100 * (patch % GW) / GW) + "%"; marker.style.top = (100 * Math.floor(patch / GW) / GH) + "%";
    marker.style.width = (100 / GW) + "%"; marker.style.height = (100 / GH) + "%";
  }

  function tokenName(token) {
    if (token < PREFIX) return M.prefix_names[token];
    const patch = token - PREFIX;
    return "patch (row " + (Math.floor(patch / GW) + 1) + ", column " + (patch % GW + 1) + ")";
  }

  function headName(head) {
    return typeof head === "number" ? "head " + (head + 1) : head + " of the " + M.heads + " heads";
  }

  function prefixText(prefix) {
    const parts = [];
    let registers = 0;
    for (let k = 0; k < PREFIX; k++) {
      if (M.prefix_names[k].startsWith("register")) registers += prefix[k];
      else parts.push(M.prefix_names[k] + " " + pct(prefix[k]));
    }
    if (M.registers > 0) parts.push("registers " + pct(registers));
    return parts.length ? parts.join(", ") : "no prefix tokens";
  }

  function strongest(patches) {
    let best = 0;
    for (let j = 1; j < P; j++) if (patches[j] > patches[best]) best = j;
    return best;
  }

  function drawQuery() {
    if (!current) return;
    const started = performance.now();
    const q = state.query, stage = $("stage"), overlay = $("attention-overlay");
    const row = attentionRow(state.layer, state.head, q);
    paint(overlay, row.patches, false);
    Object.assign(overlay.dataset, { image: state.image, layer: state.layer, head: state.head, query: q });
    placeMarker(stage, q);
    placeMarker($("rollout-stage"), q);
    $("query-label").textContent = tokenName(q) + ", layer " + (state.layer + 1) + ", " + headName(state.head);
    let onPatches = 0;
    for (const v of row.patches) onPatches += v;
    const top = strongest(row.patches);
    $("attention-readout").textContent = "To the image patches " + pct(onPatches) + "; to " + prefixText(row.prefix)
      + ". Strongest patch: " + tokenName(top + PREFIX) + " with " + pct(row.patches[top]) + ". Colours run from 0 to that maximum.";
    const rollout = rolloutRow(q);
    const rolloutCanvas = $("rollout-overlay");
    paint(rolloutCanvas, rollout.patches, false);
    rolloutCanvas.dataset.query = q;
    $("rollout-query-label").textContent = tokenName(q);
    $("rollout-readout").textContent = "Heads fused by " + DATA.settings.head_fusion + ", all layers, residual included; on "
      + prefixText(rollout.prefix) + ". Row 0 ([CLS]) is the rollout saliency map below.";
    for (const button of $("query-tokens").children) button.setAttribute("aria-pressed", String(Number(button.dataset.token) === q));
    api.lastDrawMs = performance.now() - started;
    api.draws += 1;
  }

  function chartScale(canvas) {
    const rect = canvas.getBoundingClientRect(), ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(rect.width * ratio); canvas.height = Math.round(rect.height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    return { context, width: rect.width, height: rect.height };
  }

  // A round tick step (1, 2 or 5 times a power of ten): about four ticks up to highest.
  function tickStep(highest) {
    const rough = highest / 4, power = Math.pow(10, Math.floor(Math.log10(rough)));
    return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= rough);
  }

  function drawChart(canvas, values, average, highest, reference) {
    const { context, width, height } = chartScale(canvas);
    const step = tickStep(highest), yMax = Math.ceil(highest / step - 1e-9) * step;
    const left = 44, right = 10, top = 22, bottom = 28, w = width - left - right, h = height - top - bottom;
    const x = (layer, head) => left + (layer + 0.5 + (M.heads > 1 ? ((head + 0.5) / M.heads - 0.5) * 0.6 : 0)) * w / M.depth;
    const y = (v) => top + h * (1 - Math.min(v, yMax) / yMax);
    context.fillStyle = "rgba(47,111,222,0.10)";
    context.fillRect(left + state.layer * w / M.depth, top, w / M.depth, h);
    context.font = "11px system-ui, sans-serif"; context.fillStyle = "#5b6475"; context.strokeStyle = "#e3e6ec";
    for (let v = 0; v <= yMax + step / 2; v += step) {
      context.beginPath(); context.moveTo(left, y(v) + 0.5); context.lineTo(left + w, y(v) + 0.5); context.stroke();
      context.textAlign = "right"; context.fillText(String(Number(v.toPrecision(6))), left - 4, y(v) + 4);
    }
    context.textAlign = "center";
    const every = Math.ceil(M.depth / 12);
    for (let l = 0; l < M.depth; l += every) context.fillText(String(l + 1), x(l, (M.heads - 1) / 2), top + h + 14);
    context.fillText("layer", left + w / 2, top + h + 26);
    if (reference !== null) {
      context.setLineDash([4, 3]); context.strokeStyle = "#888";
      context.beginPath(); context.moveTo(left, y(reference)); context.lineTo(left + w, y(reference)); context.stroke();
      context.setLineDash([]); context.textAlign = "left"; context.fillText("uniform", left + 4, y(reference) - 3);
    }
    for (let l = 0; l < M.depth; l++) {
      for (let hd = 0; hd < M.heads; hd++) {
        const chosen = state.head === hd;
        context.beginPath(); context.arc(x(l, hd), y(average[l][hd]), chosen ? 5 : 3.5, 0, 2 * Math.PI);
        context.strokeStyle = "#9aa1ad"; context.lineWidth = 1; context.stroke();
        context.beginPath(); context.arc(x(l, hd), y(values[l][hd]), chosen ? 4.5 : 3, 0, 2 * Math.PI);
        context.fillStyle = HEAD_COLOURS[hd % HEAD_COLOURS.length]; context.fill();
        if (chosen) { context.strokeStyle = "#000"; context.lineWidth = 1.5; context.stroke(); }
      }
    }
    context.textAlign = "right"; context.fillStyle = "#5b6475";
    context.fillText("● this image   ○ mean over the " + DATA.images.length + " images of the page", left + w, 14);
  }

  function drawCharts() {
    const record = DATA.images[state.image], average = DATA.average;
    let distanceMax = 0;
    for (const table of [record.distance, average.distance]) for (const row of table) for (const v of row) distanceMax = Math.max(distanceMax, v);
    distanceMax = Math.max(distanceMax, M.uniform_distance);
    drawChart($("distance-chart"), record.distance, average.distance, Math.max(distanceMax * 1.1, 1e-6), M.uniform_distance);
    drawChart($("entropy-chart"), record.entropy, average.entropy, Math.log(N) * 1.05, Math.log(N));
    const l = state.layer;
    const summary = (table, hd) => typeof hd === "number" ? table[l][hd]
      : (hd === "max" ? Math.max(...table[l]) : table[l].reduce((a, b) => a + b, 0) / M.heads);
    $("stats-readout").textContent = "Layer " + (l + 1) + ", " + headName(state.head) + ": mean attention distance "
      + fmt(summary(record.distance, state.head), 1) + " px (page " + fmt(summary(average.distance, state.head), 1)
      + " px), entropy " + fmt(summary(record.entropy, state.head), 2) + " nats (page "
      + fmt(summary(average.entropy, state.head), 2) + "; uniform " + Math.log(N).toFixed(2) + ").";
  }

  function drawAll() {
    $("layer-value").textContent = String(state.layer + 1);
    drawQuery();
    drawCharts();
  }

  // ---- the image on show -------------------------------------------------------------------

  function imageSource(record) {
    return "data:image/" + (record.image.mime === "png" ? "png" : "jpeg") + ";base64," + record.image.base64;
  }

  function showPredictions(record) {
    const list = $("predictions");
    list.replaceChildren();
    for (const [label, probability] of record.top) {
      const item = el("li");
      item.append(el("span", "label", label), el("span", "probability", pct(probability)));
      const bar = el("span", "bar");
      bar.style.width = Math.round(160 * probability) + "px";
      item.append(bar);
      list.append(item);
    }
  }

  function showMaps(record) {
    for (const method of DATA.methods) {
      const figure = $("map-" + method.key);
      paint(figure.querySelector("canvas.overlay"), Float32Array.from(record.maps[method.key].flat()), true);
      const auc = record.auc[method.key], text = figure.querySelector(".auc");
      text.replaceChildren();
      if (auc) {
        text.append("deletion AUC ", el("b", "", fmt(auc.deletion, 3)), " (lower is better) · insertion AUC ",
          el("b", "", fmt(auc.insertion, 3)), " (higher is better)");
      } else {
        text.textContent = "deletion/insertion AUC not computed";
      }
    }
  }

  async function selectImage(index) {
    state.image = index;
    const record = DATA.images[index];
    for (const button of $("images").children) button.setAttribute("aria-current", String(Number(button.dataset.index) === index));
    for (const image of document.querySelectorAll(".stage img.view")) image.src = imageSource(record);
    $("image-name").textContent = record.name;
    showPredictions(record);
    showMaps(record);
    $("status").textContent = "Decoding the attention of this image…";
    const rows = await imageRows(index);
    if (state.image !== index) return;
    current = rows;
    $("status").textContent = "";
    drawAll();
  }
  api.selectImage = selectImage;

  // ---- building the page -------------------------------------------------------------------

  function buildImageList() {
    DATA.images.forEach((record, index) => {
      const button = el("button");
      button.type = "button"; button.dataset.index = index;
      const thumb = el("img"); thumb.alt = ""; thumb.src = imageSource(record);
      const text = el("span");
      const [label, probability] = record.top[0];
      text.append(el("div", "name", record.name), el("div", "top1", label + " " + pct(probability)));
      button.append(thumb, text);
      button.addEventListener("click", () => selectImage(index));
      $("images").append(button);
    });
  }

  function buildMaps() {
    for (const method of DATA.methods) {
      const figure = el("figure"); figure.id = "map-" + method.key;
      const stage = el("div", "stage small");
      const image = el("img", "view"); image.alt = "";
      stage.append(image, el("canvas", "overlay"));
      figure.append(el("figcaption", "", method.label), stage, el("div", "auc"));
      $("maps").append(figure);
    }
    const s = DATA.settings;
    $("maps-note").textContent = "Maps of vit.explain.saliency on this image, coloured from their minimum to their maximum; "
      + "the class-specific methods explain the predicted class. "
      + "Deletion: the predicted class's probability as the most salient patches are replaced by the " + s.deletion_baseline
      + " baseline; insertion: as they are revealed on the " + s.insertion_baseline + " baseline; area under the curve over "
      + s.auc_steps + " steps (Petsiuk et al. 2018). Rollout: heads fused by " + s.head_fusion + ", discard ratio " + s.discard_ratio + ".";
  }

  function buildControls() {
    const layer = $("layer");
    layer.max = String(M.depth); layer.value = String(state.layer + 1);
    layer.addEventListener("input", () => { state.layer = Number(layer.value) - 1; drawAll(); });
    const head = $("head");
    for (const value of ["mean", "max", ...Array(M.heads).keys()]) {
      const option = el("option", "", typeof value === "number" ? "head " + (value + 1) : value + " of heads");
      option.value = String(value);
      head.append(option);
    }
    head.addEventListener("change", () => {
      state.head = /^\d+$/.test(head.value) ? Number(head.value) : head.value;
      drawAll();
    });
    for (let token = 0; token < PREFIX; token++) {
      const label = M.prefix_names[token];
      const button = el("button", "", label.startsWith("register") ? "reg " + label.slice(9) : label);
      button.type = "button"; button.dataset.token = token;
      button.addEventListener("click", () => { state.pinned = state.query = token; drawQuery(); });
      $("query-tokens").append(button);
    }
    $("follow").addEventListener("change", (event) => { state.follow = event.target.checked; });
    $("opacity").addEventListener("input", (event) => setOpacity(Number(event.target.value) / 100));
    $("show-grid").addEventListener("change", (event) => {
      for (const grid of document.querySelectorAll("canvas.grid-lines")) grid.style.display = event.target.checked ? "" : "none";
    });
  }

  function setOpacity(alpha) {
    for (const overlay of document.querySelectorAll("canvas.overlay")) overlay.style.opacity = String(alpha);
  }

  function patchAt(event, stage) {
    const rect = stage.getBoundingClientRect();
    const column = Math.floor((event.clientX - rect.left) / rect.width * GW);
    const row = Math.floor((event.clientY - rect.top) / rect.height * GH);
    return row >= 0 && column >= 0 && row < GH && column < GW ? PREFIX + row * GW + column : null;
  }

  function watchStage() {
    const stage = $("stage");
    const choose = (query, pin) => {
      if (pin) state.pinned = query;
      if (query !== state.query || pin) { state.query = query; drawQuery(); }
    };
    stage.addEventListener("mousemove", (event) => {
      const query = patchAt(event, stage);
      if (state.follow && query !== null) choose(query, false);
    });
    stage.addEventListener("mouseleave", () => choose(state.pinned, false));
    stage.addEventListener("click", (event) => { const query = patchAt(event, stage); if (query !== null) choose(query, true); });
    stage.addEventListener("keydown", (event) => {
      const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
      if (!(event.key in moves)) return;
      event.preventDefault();
      const patch = Math.max(state.pinned - PREFIX, 0);
      const row = Math.min(Math.max(Math.floor(patch / GW) + moves[event.key][0], 0), GH - 1);
      const column = Math.min(Math.max(patch % GW + moves[event.key][1], 0), GW - 1);
      choose(PREFIX + row * GW + column, true);
    });
  }

  function writeNotes() {
    const s = DATA.settings;
    const notes = [
      "Attention: each row is the softmax weights of one query token over all tokens. The overlay shows the weights on the image patches, coloured from 0 to the row's largest patch weight; the weights on [CLS] and the registers are given in numbers. Stored with " + s.attention_bits + " bits per weight relative to that maximum (the [CLS] and register weights exactly).",
      "Mean attention distance: for each patch query, the attention-weighted mean distance in pixels of the model's input to the other patches, with the row renormalised over the patches, averaged over the patch queries (Dosovitskiy et al. 2021, Fig. 7). Entropy: of each patch query's full row, in nats, averaged over the patch queries. [CLS] and register rows are left out of both.",
    ];
    for (const text of notes) $("notes").append(el("p", "", text));
  }

  function subtitle() {
    return (DATA.title ? DATA.title + ": " : "") + M.depth + " layers × " + M.heads + " heads, " + GH + "×" + GW + " patches of "
      + M.patch + " px (input " + M.img_size + " px), [CLS]" + (M.registers ? " + " + M.registers + " registers" : "")
      + "; " + DATA.images.length + " images";
  }

  async function start() {
    $("subtitle").textContent = subtitle();
    if (typeof DecompressionStream === "undefined") {
      throw new Error("this browser lacks DecompressionStream; open the page in a current Chrome, Edge, Firefox or Safari");
    }
    if (M.img_size / Math.max(GH, GW) < 8 || M.img_size <= 96) {
      for (const stage of document.querySelectorAll(".stage")) stage.classList.add("pixelated");
    }
    buildImageList();
    buildMaps();
    buildControls();
    watchStage();
    writeNotes();
    setOpacity(0.7);
    for (const grid of document.querySelectorAll("canvas.grid-lines")) drawGridLines(grid);
    await selectImage(0);
    api.ready = true;
  }

  start().catch((error) => {
    api.error = String(error && error.message || error);
    $("status").textContent = "Cannot show the page: " + api.error;
  });
})();
