// murakit page: choose or drop the images of one study, send them, show the result.
"use strict";

(function () {
  const limits = { maxFiles: 11, maxBytes: 20 * 1024 * 1024 };
  const chosen = []; // {file, url}

  const $ = (id) => document.getElementById(id);
  const form = $("predict-form");
  const input = $("files");
  const dropzone = $("dropzone");
  const list = $("file-list");
  const clearButton = $("clear");
  const button = $("predict");
  const statusBox = $("status");
  const errorBox = $("error");
  const results = $("results");

  function setStatus(text) { statusBox.textContent = text; }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(0) + " kB";
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  function isPreviewable(file) {
    return /^image\/(png|jpeg)$/.test(file.type) || /\.(png|jpe?g)$/i.test(file.name);
  }

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  // ---------------------------------------------------------------- choosing files

  function addFiles(files) {
    showError("");
    let skipped = 0;
    for (const file of files) {
      const dup = chosen.some((c) => c.file.name === file.name && c.file.size === file.size &&
        c.file.lastModified === file.lastModified);
      if (dup) { skipped += 1; continue; }
      chosen.push({ file, url: isPreviewable(file) ? URL.createObjectURL(file) : null });
    }
    renderList();
    let text = plural(chosen.length, "image") + " chosen.";
    if (skipped) text += " " + plural(skipped, "duplicate") + " ignored.";
    if (chosen.length > limits.maxFiles) {
      showError("A study has at most " + limits.maxFiles + " images; you chose " +
        chosen.length + ". Remove some before predicting.");
    }
    setStatus(text);
  }

  function removeAt(index) {
    const [gone] = chosen.splice(index, 1);
    if (gone && gone.url) URL.revokeObjectURL(gone.url);
    renderList();
    setStatus("Removed " + gone.file.name + ". " + plural(chosen.length, "image") + " chosen.");
    const next = list.querySelectorAll("button.remove")[Math.min(index, chosen.length - 1)];
    (next || dropzone).focus();
  }

  function renderList() {
    list.replaceChildren();
    chosen.forEach((c, i) => {
      const li = document.createElement("li");
      let thumb;
      if (c.url) {
        thumb = document.createElement("img");
        thumb.src = c.url;
        thumb.alt = "";
      } else {
        thumb = document.createElement("span");
        thumb.textContent = /\.dcm$|\.dicom$|dicom/i.test(c.file.name + c.file.type) ? "DICOM" : "FILE";
        thumb.setAttribute("aria-hidden", "true");
      }
      thumb.className = "thumb";
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = c.file.name;
      name.title = c.file.name;
      const size = document.createElement("span");
      size.className = "file-size";
      size.textContent = formatBytes(c.file.size);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "\u00d7";
      remove.setAttribute("aria-label", "Remove " + c.file.name);
      remove.addEventListener("click", () => removeAt(i));
      li.append(thumb, name, size, remove);
      list.append(li);
    });
    clearButton.hidden = chosen.length === 0;
  }

  function openChooser() { input.click(); }

  dropzone.addEventListener("click", openChooser);
  dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openChooser();
    }
  });
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = ""; // choosing the same file again must fire change again
  });
  ["dragenter", "dragover"].forEach((type) => dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((type) => dropzone.addEventListener(type, () => {
    dropzone.classList.remove("dragover");
  }));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      addFiles(Array.from(event.dataTransfer.files));
    }
  });
  // A file dropped beside the zone must not make the browser navigate away to it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  clearButton.addEventListener("click", () => {
    chosen.splice(0).forEach((c) => c.url && URL.revokeObjectURL(c.url));
    renderList();
    showError("");
    setStatus("All images removed.");
    dropzone.focus();
  });

  // ---------------------------------------------------------------- predicting

  function problemWithChoice() {
    if (chosen.length === 0) return "Choose at least one image of the study first.";
    if (chosen.length > limits.maxFiles) {
      return "A study has at most " + limits.maxFiles + " images; you chose " + chosen.length + ".";
    }
    const big = chosen.find((c) => c.file.size > limits.maxBytes);
    if (big) return big.file.name + " is larger than " + formatBytes(limits.maxBytes) + ".";
    const empty = chosen.find((c) => c.file.size === 0);
    if (empty) return empty.file.name + " is empty.";
    return "";
  }

  async function predict(event) {
    event.preventDefault();
    showError("");
    const problem = problemWithChoice();
    if (problem) {
      showError(problem);
      setStatus("Nothing sent.");
      return;
    }
    const data = new FormData();
    chosen.forEach((c) => data.append("files", c.file, c.file.name));
    if ($("part").value) data.append("part", $("part").value);
    data.append("cam", $("cam").checked ? "true" : "false");

    button.setAttribute("aria-busy", "true");
    button.disabled = true;
    setStatus("Analysing " + plural(chosen.length, "image") + "\u2026");
    const started = performance.now();
    try {
      const response = await fetch("/api/predict", { method: "POST", body: data });
      let body = null;
      try { body = await response.json(); } catch (_) { body = null; }
      if (!response.ok) {
        const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
        showError("The images could not be analysed: " + detail);
        setStatus("Failed.");
        return;
      }
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      showResult(body);
      const called = body.decision === "uncertain"
        ? "uncertain, close to the threshold" : "the study looks " + body.label;
      setStatus("Done in " + seconds + " s: " + called + " (probability " +
        body.study_probability.toFixed(2) + ").");
    } catch (err) {
      showError("Could not reach the murakit server. Check that it is still running, then try again.");
      setStatus("Failed.");
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  function capitalize(text) { return text.charAt(0).toUpperCase() + text.slice(1); }

  function pct(x) { return x === null || x === undefined ? "n/a" : (100 * x).toFixed(1) + "%"; }

  function partName(part) { return part.replace(/^XR_/, "").toLowerCase(); }

  let health = null;

  function operatingPointText(point, asked) {
    if (!point) {
      return "Validation sensitivity and specificity at the operating point: not evaluated " +
        "yet (run murakit evaluate on this model).";
    }
    let scope = point.scope === "all parts" ? "all body parts" : partName(point.scope);
    if (asked && point.scope !== asked) scope += "; no figures for " + partName(asked);
    let text = "At the operating threshold " + point.threshold.toFixed(2) + ", on the " +
      point.split + " split (" + scope + ", " + point.n_studies +
      (point.n_studies === 1 ? " study" : " studies") +
      "): sensitivity " + pct(point.sensitivity) + ", specificity " + pct(point.specificity) + ".";
    if (!point.same_threshold) {
      text += " Evaluated at a threshold other than the model's " +
        (health ? health.threshold.toFixed(2) : "") + ": run murakit evaluate again.";
    }
    return text;
  }

  function decisionLabel(decision, label) {
    return decision === "uncertain" ? "uncertain" : label;
  }

  function showResult(body) {
    const verdict = $("verdict");
    verdict.className = "verdict " + body.decision + " " + (body.positive ? "abnormal" : "normal");
    const [low, high] = body.uncertain_band;
    $("study-label").textContent = capitalize(decisionLabel(body.decision, body.label));
    $("study-call").textContent = body.decision === "uncertain"
      ? "close to the threshold; the model leans " + body.label : "";
    $("study-probability").textContent = body.study_probability.toFixed(2) + " (" +
      Math.round(body.study_probability * 100) + "%)";
    $("meter-fill").style.width = (body.study_probability * 100).toFixed(1) + "%";
    $("meter-threshold").style.left = (body.threshold * 100).toFixed(1) + "%";
    $("meter-band").style.left = (low * 100).toFixed(1) + "%";
    $("meter-band").style.width = ((high - low) * 100).toFixed(1) + "%";
    const part = body.part ? partName(body.part) + " " : "";
    $("verdict-detail").textContent = "Mean of " + plural(body.images.length, "image") +
      " of this " + part + "study; called " + (health ? health.classes[1] : "positive") +
      " at " + body.threshold.toFixed(2) + " or above.";
    $("band-detail").textContent = "Uncertain band: " + low.toFixed(2) + " to " +
      high.toFixed(2) + " (threshold " + body.threshold.toFixed(2) + " \u00b1 " +
      body.uncertain_margin.toFixed(2) + "); a probability inside it is shown as uncertain.";
    $("operating-point").textContent = operatingPointText(body.validation, body.part);

    const grid = $("image-results");
    grid.replaceChildren();
    body.images.forEach((image) => {
      const li = document.createElement("li");
      const figure = document.createElement("figure");
      if (image.cam_png_base64) {
        const open = document.createElement("button");
        open.type = "button";
        open.className = "open-viewer";
        open.setAttribute("aria-label", "Open " + image.name + " full size");
        const img = document.createElement("img");
        img.className = "cam";
        img.src = "data:image/png;base64," + image.cam_png_base64;
        img.alt = "Heat map over " + image.name + ", probability " + image.probability.toFixed(2);
        open.append(img);
        open.addEventListener("click", () => openViewer(image, open));
        figure.append(open);
      } else {
        const none = document.createElement("div");
        none.className = "no-cam";
        none.textContent = "No heat map requested";
        figure.append(none);
      }
      const caption = document.createElement("figcaption");
      const name = document.createElement("span");
      name.className = "img-name";
      name.textContent = image.name;
      const prob = document.createElement("span");
      prob.className = "img-prob";
      prob.textContent = "p = " + image.probability.toFixed(2);
      const tag = document.createElement("span");
      tag.className = "tag " + image.decision + " " + image.label;
      tag.textContent = decisionLabel(image.decision, image.label);
      prob.append(tag);
      caption.append(name, prob);
      figure.append(caption);
      li.append(figure);
      grid.append(li);
    });
    results.hidden = false;
    results.focus();
  }

  // ---------------------------------------------------------------- full-size viewer

  const viewer = $("viewer");
  const stages = [$("stage-original"), $("stage-heat")];
  const layerBoxes = [$("layers-original"), $("layers-heat")];
  const view = { image: null, width: 1, height: 1, zoom: 1, x: 0, y: 0, opener: null,
    dicom: null, canvases: [], heat: null };
  const MIN_ZOOM = 0.05;
  const MAX_ZOOM = 16;

  function applyTransform() {
    const t = "translate(" + view.x + "px, " + view.y + "px) scale(" + view.zoom + ")";
    layerBoxes.forEach((box) => { box.style.transform = t; });
    $("zoom-level").textContent = Math.round(view.zoom * 100) + "%";
  }

  function fit() {
    const stage = stages[0];
    const w = stage.clientWidth || 400;
    const h = stage.clientHeight || 400;
    view.zoom = Math.min(w / view.width, h / view.height);
    view.x = (w - view.width * view.zoom) / 2;
    view.y = (h - view.height * view.zoom) / 2;
    applyTransform();
  }

  function zoomAt(factor, cx, cy) {
    const stage = stages[0];
    if (cx === undefined) { cx = stage.clientWidth / 2; cy = stage.clientHeight / 2; }
    const zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, view.zoom * factor));
    view.x = cx - (cx - view.x) * (zoom / view.zoom);
    view.y = cy - (cy - view.y) * (zoom / view.zoom);
    view.zoom = zoom;
    applyTransform();
  }

  function setOpacity(percent) {
    $("opacity").value = String(percent);
    $("opacity-value").textContent = percent + "%";
    if (view.heat) view.heat.style.opacity = String(percent / 100);
  }

  function layerImage(src, className, alt) {
    const img = document.createElement("img");
    img.src = src;
    img.className = className;
    img.alt = alt;
    img.draggable = false;
    img.width = view.width;
    img.height = view.height;
    return img;
  }

  async function inflate(base64) {
    const binary = atob(base64);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const buffer = await new Response(stream).arrayBuffer();
    const dv = new DataView(buffer);
    const values = new Uint16Array(buffer.byteLength / 2);
    for (let i = 0; i < values.length; i += 1) values[i] = dv.getUint16(2 * i, true);
    return values;
  }

  function drawWindow() {
    const d = view.dicom;
    if (!d || !d.values) return;
    const center = parseFloat($("wl-center").value);
    const width = Math.max(1, parseFloat($("wl-width").value) || 1);
    if (!Number.isFinite(center)) return;
    // DICOM's linear VOI function (PS3.3 C.11.2.1.2), applied to the values after the modality LUT.
    const top = Math.round((d.maximum - d.offset) / d.scale);
    const lut = new Uint8ClampedArray(top + 1);
    for (let u = 0; u <= top; u += 1) {
      const v = d.offset + d.scale * u;
      let y = (v - (center - 0.5)) / Math.max(width - 1, 1e-6) + 0.5;
      y = Math.min(1, Math.max(0, y));
      lut[u] = Math.round(255 * (d.invert ? 1 - y : y));
    }
    view.canvases.forEach((canvas) => {
      const ctx = canvas.getContext("2d");
      const out = ctx.createImageData(d.width, d.height);
      const px = out.data;
      for (let i = 0; i < d.values.length; i += 1) {
        const g = lut[Math.min(top, d.values[i])];
        px[4 * i] = g; px[4 * i + 1] = g; px[4 * i + 2] = g; px[4 * i + 3] = 255;
      }
      ctx.putImageData(out, 0, 0);
    });
    $("wl-note").textContent = "DICOM window centre " + center.toFixed(0) + ", width " +
      width.toFixed(0) + " (values after rescale: " + d.minimum.toFixed(0) + " to " +
      d.maximum.toFixed(0) + "). The model saw the file's own window.";
  }

  function setWindow(center, width) {
    $("wl-center").value = String(Math.round(center * 100) / 100);
    $("wl-width").value = String(Math.round(width * 100) / 100);
    drawWindow();
  }

  async function openViewer(image, opener) {
    view.image = image;
    view.opener = opener;
    const dicom = image.dicom;
    const original = "data:image/png;base64," + (image.original_png_base64 || image.cam_png_base64);
    const probe = new Image();
    probe.src = original;
    await probe.decode().catch(() => null);
    view.width = dicom ? dicom.width : (probe.naturalWidth || 512);
    view.height = dicom ? dicom.height : (probe.naturalHeight || 512);
    view.canvases = [];
    view.dicom = null;
    layerBoxes.forEach((box, i) => {
      box.replaceChildren();
      box.style.width = view.width + "px";
      box.style.height = view.height + "px";
      if (dicom) {
        const canvas = document.createElement("canvas");
        canvas.width = view.width;
        canvas.height = view.height;
        canvas.className = "base";
        canvas.setAttribute("role", "img");
        canvas.setAttribute("aria-label", (i === 0 ? "Original " : "Heat map over ") + image.name);
        view.canvases.push(canvas);
        box.append(canvas);
      } else {
        box.append(layerImage(original, "base", i === 0 ? "Original " + image.name : ""));
      }
    });
    view.heat = null;
    if (image.heat_png_base64) {
      view.heat = layerImage("data:image/png;base64," + image.heat_png_base64, "heat",
        "Heat map over " + image.name);
      layerBoxes[1].append(view.heat);
    }
    $("viewer-title").textContent = image.name;
    $("viewer-prob").textContent = "p = " + image.probability.toFixed(2) + " \u00b7 " +
      decisionLabel(image.decision, image.label);
    $("wl-controls").hidden = !dicom;
    $("wl-note").textContent = dicom ? "Decoding DICOM values\u2026" :
      "Window/level is available for DICOM files; this image is shown as the model saw it.";
    setOpacity(parseInt($("opacity").value, 10));
    if (!viewer.open) viewer.showModal();
    fit();
    if (dicom) {
      try {
        view.dicom = Object.assign({}, dicom, { values: await inflate(dicom.data_zlib_base64) });
        setWindow(dicom.window_center, dicom.window_width);
      } catch (err) {
        $("wl-note").textContent = "This browser cannot decode the DICOM values for window/level.";
      }
    }
  }

  function closeViewer() {
    if (viewer.open) viewer.close();
  }

  viewer.addEventListener("close", () => {
    if (view.opener) view.opener.focus();
  });
  $("viewer-close").addEventListener("click", closeViewer);
  $("zoom-in").addEventListener("click", () => zoomAt(1.25));
  $("zoom-out").addEventListener("click", () => zoomAt(1 / 1.25));
  $("zoom-fit").addEventListener("click", fit);
  $("opacity").addEventListener("input", () => setOpacity(parseInt($("opacity").value, 10)));
  ["wl-center", "wl-width"].forEach((id) => $(id).addEventListener("input", drawWindow));
  $("wl-file").addEventListener("click", () => {
    if (view.dicom) setWindow(view.dicom.window_center, view.dicom.window_width);
  });
  $("wl-full").addEventListener("click", () => {
    const d = view.dicom;
    if (d) setWindow((d.minimum + d.maximum) / 2, Math.max(1, d.maximum - d.minimum));
  });
  viewer.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    if (event.key === "+" || event.key === "=") { event.preventDefault(); zoomAt(1.25); }
    if (event.key === "-") { event.preventDefault(); zoomAt(1 / 1.25); }
    if (event.key === "0") { event.preventDefault(); fit(); }
  });
  stages.forEach((stage) => {
    stage.addEventListener("wheel", (event) => {
      event.preventDefault();
      const rect = stage.getBoundingClientRect();
      zoomAt(Math.exp(-event.deltaY / 400), event.clientX - rect.left, event.clientY - rect.top);
    }, { passive: false });
    let drag = null;
    stage.addEventListener("pointerdown", (event) => {
      drag = { x: event.clientX - view.x, y: event.clientY - view.y };
      stage.setPointerCapture(event.pointerId);
      stage.classList.add("dragging");
    });
    stage.addEventListener("pointermove", (event) => {
      if (!drag) return;
      view.x = event.clientX - drag.x;
      view.y = event.clientY - drag.y;
      applyTransform();
    });
    const stop = () => { drag = null; stage.classList.remove("dragging"); };
    stage.addEventListener("pointerup", stop);
    stage.addEventListener("pointercancel", stop);
  });

  form.addEventListener("submit", predict);

  // ---------------------------------------------------------------- model information

  fetch("/health").then((r) => r.json()).then((h) => {
    health = h;
    limits.maxFiles = h.max_files;
    limits.maxBytes = h.max_bytes;
    const [low, high] = h.uncertain_band;
    $("model-info").textContent = "Model " + h.model + " \u00b7 " + plural(h.members, "network") +
      " (" + h.arch + ", " + h.size + " px) \u00b7 threshold " + h.threshold.toFixed(2) +
      " \u00b7 uncertain " + low.toFixed(2) + "\u2013" + high.toFixed(2);
    // The parts this model was trained on (MURA's seven, or e.g. FracAtlas's own).
    const select = $("part");
    const keep = select.value;
    select.replaceChildren(new Option("Not specified", ""));
    h.parts.forEach((part) => select.append(new Option(capitalize(partName(part)), part)));
    select.value = h.parts.includes(keep) ? keep : "";
  }).catch(() => {
    $("model-info").textContent = "Model information unavailable.";
  });
})();
