// xrayage web page: upload one radiograph to POST /v1/predict and show the result.
// No framework and no external assets, so the page works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "xrayage-api-key";

function headers() {
  const key = $("api-key").value || sessionStorage.getItem(KEY_STORE) || "";
  return key ? { "X-API-Key": key } : {};
}

function fmt(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function signed(value) {
  if (value === null || value === undefined) return "–";
  return (value > 0 ? "+" : "") + Number(value).toFixed(1) + " years";
}

function setStatus(text, kind = "") {
  $("status").textContent = text;
  $("status").className = "status " + kind;
}

async function loadModel() {
  try {
    const response = await fetch("/v1/model", { headers: headers() });
    if (response.status === 401) {
      $("key-row").hidden = false;
      $("model").textContent = "Model: enter the API key to use this server.";
      return;
    }
    const card = await response.json();
    $("model").textContent = `Model: ${card.name} ${card.version}`;
  } catch (err) {
    $("model").textContent = "Model: server unreachable";
  }
}

function show(result) {
  $("result").hidden = false;
  $("xray-age").textContent = fmt(result.xray_age);
  $("interval").textContent = result.age_interval_lower === null
    ? ""
    : `${Math.round(100 * result.interval_coverage)}% interval for the chronological age: ${fmt(result.age_interval_lower)}–${fmt(result.age_interval_upper)} years`;
  $("chrono").textContent = result.age_years === null
    ? "unknown (type it in to get a gap)" : fmt(result.age_years) + " years";
  $("gap").textContent = signed(result.age_gap);
  $("gap-corrected").textContent = signed(result.age_gap_corrected);
  $("qc-status").textContent = result.qc_status;
  $("qc-status").className = "qc-" + result.qc_status;
  const list = $("qc-messages");
  list.replaceChildren(...result.qc_messages.map((m) => {
    const li = document.createElement("li");
    li.textContent = m;
    return li;
  }));
  const img = $("heatmap");
  if (result.heatmap_png_base64) {
    img.src = "data:image/png;base64," + result.heatmap_png_base64;
  } else {
    img.removeAttribute("src");
  }
  $("heatmap-figure").hidden = !result.heatmap_png_base64;  // no caption without a picture
  $("refused").hidden = result.xray_age !== null;
}

function upload(file) {
  if (!file) return;
  if ($("api-key").value) sessionStorage.setItem(KEY_STORE, $("api-key").value);
  const form = new FormData();
  form.append("file", file);
  form.append("heatmap", "true");
  if ($("age").value !== "") form.append("age_years", $("age").value);
  if ($("sex").value !== "") form.append("sex", $("sex").value);
  const xhr = new XMLHttpRequest();
  const bar = $("progress");
  bar.hidden = false;
  bar.removeAttribute("value");
  $("result").hidden = true;
  document.body.classList.add("busy");
  setStatus("Uploading…", "busy");
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total;
  };
  xhr.upload.onload = () => {
    bar.removeAttribute("value");
    setStatus("Estimating X-ray age…", "busy");
  };
  xhr.onloadend = () => {
    bar.hidden = true;
    document.body.classList.remove("busy");
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
    if (xhr.status === 200 && body) {
      show(body);
      loadModel();  // the key worked: the header names the model
      setStatus(body.qc_status === "reject"
        ? "The quality checks refused this image: no X-ray age."
        : "Done.", body.qc_status === "reject" ? "error" : "done");
    } else if (xhr.status === 401) {
      $("key-row").hidden = false;
      setStatus("This server needs an API key.", "error");
    } else {
      const detail = body && body.detail ? (typeof body.detail === "string"
        ? body.detail : JSON.stringify(body.detail)) : "no response from the server";
      setStatus(`Error ${xhr.status || ""}: ${detail}`, "error");
    }
  };
  xhr.open("POST", "/v1/predict");
  for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
  xhr.send(form);
}

const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault();
  drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => upload(e.dataTransfer.files[0]));
$("file").addEventListener("change", (e) => {
  upload(e.target.files[0]);
  e.target.value = "";
});
$("api-key").addEventListener("change", loadModel);
loadModel();
