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
      setStatus("Done in " + seconds + " s: the study looks " + body.label + " (probability " +
        body.study_probability.toFixed(2) + ").");
    } catch (err) {
      showError("Could not reach the murakit server. Check that it is still running, then try again.");
      setStatus("Failed.");
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  function showResult(body) {
    const verdict = $("verdict");
    verdict.className = "verdict " + (body.positive ? "abnormal" : "normal");
    $("study-label").textContent = body.label.charAt(0).toUpperCase() + body.label.slice(1);
    $("study-probability").textContent = body.study_probability.toFixed(2) + " (" +
      Math.round(body.study_probability * 100) + "%)";
    $("meter-fill").style.width = (body.study_probability * 100).toFixed(1) + "%";
    $("meter-threshold").style.left = (body.threshold * 100).toFixed(1) + "%";
    const partName = body.part ? body.part.replace("XR_", "").toLowerCase() + " " : "";
    $("verdict-detail").textContent = "Mean of " + plural(body.images.length, "image") +
      " of this " + partName + "study; called positive at " + body.threshold.toFixed(2) +
      " or above.";

    const grid = $("image-results");
    grid.replaceChildren();
    body.images.forEach((image) => {
      const li = document.createElement("li");
      const figure = document.createElement("figure");
      if (image.cam_png_base64) {
        const img = document.createElement("img");
        img.className = "cam";
        img.src = "data:image/png;base64," + image.cam_png_base64;
        img.alt = "Heat map over " + image.name + ", probability " + image.probability.toFixed(2);
        figure.append(img);
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
      tag.className = "tag " + image.label;
      tag.textContent = image.label;
      prob.append(tag);
      caption.append(name, prob);
      figure.append(caption);
      li.append(figure);
      grid.append(li);
    });
    results.hidden = false;
    results.focus();
  }

  form.addEventListener("submit", predict);

  // ---------------------------------------------------------------- model information

  fetch("/health").then((r) => r.json()).then((h) => {
    limits.maxFiles = h.max_files;
    limits.maxBytes = h.max_bytes;
    $("model-info").textContent = "Model " + h.model + " \u00b7 " + plural(h.members, "network") +
      " (" + h.arch + ", " + h.size + " px) \u00b7 threshold " + h.threshold.toFixed(2);
  }).catch(() => {
    $("model-info").textContent = "Model information unavailable.";
  });
})();
