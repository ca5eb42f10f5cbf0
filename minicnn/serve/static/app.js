// The demo page: draw or drop a picture, POST its bytes to /api/predict, show the answer.
// Plain browser JavaScript, no libraries and no build step.
"use strict";

const MAX_BODY_BYTES = 10 * 1024 * 1024;      // the server's cap (minicnn/serve/server.py)
const STROKE_WIDTH = 24;
const SEND_WHILE_DRAWING_MS = 150;           // while a stroke goes on, answer at most this often

const drawCanvas = document.getElementById("draw");
const drawContext = drawCanvas.getContext("2d");
const preparedCanvas = document.getElementById("prepared");
const heatCanvas = document.getElementById("heat");
const bars = document.getElementById("bars");
const topLabel = document.getElementById("top-label");
const topProbability = document.getElementById("top-probability");
const statusLine = document.getElementById("status");
const heatTitle = document.getElementById("heat-title");

let showingPhoto = false;       // a photo fills the canvas: the next stroke starts afresh
let stroke = null;              // the pointer id and last point of the stroke being drawn
let lastSent = 0;
let inFlight = false;
let waiting = null;             // the newest picture that came while a request was in flight
let encoding = 0;               // drawings still becoming PNGs (canvas.toBlob calls back later)

function clearCanvas() {
  drawContext.fillStyle = "#000";
  drawContext.fillRect(0, 0, drawCanvas.width, drawCanvas.height);
  showingPhoto = false;
}

function clearAll() {
  clearCanvas();
  waiting = null;
  for (const canvas of [preparedCanvas, heatCanvas]) {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }
  bars.replaceChildren();
  topLabel.textContent = "Draw an item or drop a photo";
  topProbability.textContent = "";
  heatTitle.textContent = "Where it looked";
  setStatus("");
  document.body.dataset.state = "empty";
}

// ---- drawing with mouse, touch or pen (pointer events) ----

function canvasPoint(event) {
  const box = drawCanvas.getBoundingClientRect();
  return {
    x: (event.clientX - box.left) * (drawCanvas.width / box.width),
    y: (event.clientY - box.top) * (drawCanvas.height / box.height),
  };
}

function drawSegment(from, to) {
  drawContext.strokeStyle = "#fff";
  drawContext.fillStyle = "#fff";
  drawContext.lineWidth = STROKE_WIDTH;
  drawContext.lineCap = "round";
  drawContext.lineJoin = "round";
  drawContext.beginPath();
  drawContext.moveTo(from.x, from.y);
  drawContext.lineTo(to.x, to.y);
  drawContext.stroke();
}

drawCanvas.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) return;
  event.preventDefault();
  if (showingPhoto) clearCanvas();
  drawCanvas.setPointerCapture(event.pointerId);
  const point = canvasPoint(event);
  stroke = { id: event.pointerId, last: point };
  drawSegment(point, point);
});

drawCanvas.addEventListener("pointermove", (event) => {
  if (!stroke || event.pointerId !== stroke.id) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const each of events.length ? events : [event]) {
    const point = canvasPoint(each);
    drawSegment(stroke.last, point);
    stroke.last = point;
  }
  if (performance.now() - lastSent > SEND_WHILE_DRAWING_MS) sendDrawing();
});

function endStroke(event) {
  if (!stroke || event.pointerId !== stroke.id) return;
  stroke = null;
  sendDrawing();
}
drawCanvas.addEventListener("pointerup", endStroke);
drawCanvas.addEventListener("pointercancel", endStroke);

function sendDrawing() {
  lastSent = performance.now();
  encoding += 1;
  drawCanvas.toBlob((blob) => {
    encoding -= 1;
    if (blob) predict(blob);
  }, "image/png");
}

// ---- photos: chosen or dropped ----

function showPhoto(file) {
  const url = URL.createObjectURL(file);
  const picture = new Image();
  picture.onload = () => {
    drawContext.fillStyle = "#fff";        // photos are shown as they are, usually on white
    drawContext.fillRect(0, 0, drawCanvas.width, drawCanvas.height);
    const scale = Math.min(drawCanvas.width / picture.width, drawCanvas.height / picture.height);
    const w = picture.width * scale, h = picture.height * scale;
    drawContext.drawImage(picture, (drawCanvas.width - w) / 2, (drawCanvas.height - h) / 2, w, h);
    showingPhoto = true;
    URL.revokeObjectURL(url);
  };
  picture.onerror = () => URL.revokeObjectURL(url);
  picture.src = url;
}

function usePhoto(file) {
  if (!file) return;
  if (file.size > MAX_BODY_BYTES) {
    setStatus(`That file is ${(file.size / 1048576).toFixed(1)} MB; the page takes up to 10 MB.`, true);
    return;
  }
  showPhoto(file);
  predict(file);
}

document.getElementById("file").addEventListener("change", (event) => {
  usePhoto(event.target.files[0]);
  event.target.value = "";          // choosing the same file again still answers
});

let dragDepth = 0;
document.addEventListener("dragenter", (event) => {
  event.preventDefault();
  dragDepth += 1;
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) document.body.classList.remove("dragging");
});
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  document.body.classList.remove("dragging");
  usePhoto(event.dataTransfer.files[0]);
});

document.getElementById("clear").addEventListener("click", clearAll);

// ---- asking the model ----

async function predict(blob) {
  if (inFlight) {                  // one request at a time; the newest picture waits
    waiting = blob;
    return;
  }
  inFlight = true;
  document.body.dataset.state = "asking";
  const started = performance.now();
  try {
    const response = await fetch("/api/predict", {
      method: "POST",
      body: blob,
      headers: { "Content-Type": blob.type || "application/octet-stream" },
    });
    const answer = await response.json();
    const roundTrip = performance.now() - started;
    if (!response.ok) {
      setStatus(answer.error || `The server answered ${response.status}.`, true);
      document.body.dataset.state = "error";
    } else {
      show(answer);
      setStatus(`Answered in ${roundTrip.toFixed(0)} ms (model ${answer.compute_ms.toFixed(0)} ms).`);
      statusLine.dataset.roundTripMs = roundTrip.toFixed(1);
      document.body.dataset.state = "answered";
      document.body.dataset.answers = String(Number(document.body.dataset.answers) + 1);
    }
  } catch (error) {
    setStatus(`No answer from the server (${error.message}). Is python -m minicnn serve still running?`, true);
    document.body.dataset.state = "error";
  } finally {
    inFlight = false;
    if (waiting) {
      const next = waiting;
      waiting = null;
      predict(next);
    }
  }
}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

// ---- showing the answer ----

function show(answer) {
  const best = answer.predictions[0];
  topLabel.textContent = best.label;
  topProbability.textContent = percent(best.probability);
  heatTitle.textContent = `Where it looked for "${best.label}"`;
  paintPixels(preparedCanvas, answer.image, null);
  paintPixels(heatCanvas, answer.image, answer.heatmap);
  bars.replaceChildren(...answer.predictions.map((prediction) => {
    const row = document.createElement("li");
    row.dataset.label = prediction.label;
    row.dataset.probability = String(prediction.probability);
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = prediction.label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * prediction.probability).toFixed(2)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "percent";
    value.textContent = percent(prediction.probability);
    row.append(name, track, value);
    return row;
  }));
}

function percent(probability) {
  return `${(100 * probability).toFixed(1)}%`;
}

// The 28x28 gray image, or the image under a heat map (inferno-like colours, half opacity).
const HEAT_STOPS = [
  [0.0, [0, 0, 4]], [0.25, [87, 16, 110]], [0.5, [188, 55, 84]],
  [0.75, [249, 142, 9]], [1.0, [252, 255, 164]],
];

function heatColour(value) {
  for (let i = 1; i < HEAT_STOPS.length; i += 1) {
    const [position, colour] = HEAT_STOPS[i];
    if (value <= position) {
      const [before, previous] = HEAT_STOPS[i - 1];
      const t = (value - before) / (position - before);
      return previous.map((c, k) => c + t * (colour[k] - c));
    }
  }
  return HEAT_STOPS[HEAT_STOPS.length - 1][1];
}

function paintPixels(canvas, image, heat) {
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(28, 28);
  for (let row = 0; row < 28; row += 1) {
    for (let column = 0; column < 28; column += 1) {
      const gray = 255 * image[row][column];
      let colour = [gray, gray, gray];
      if (heat) {
        const hot = heatColour(heat[row][column]);
        colour = colour.map((c, k) => 0.45 * c + 0.55 * hot[k]);
      }
      const at = 4 * (row * 28 + column);
      pixels.data.set([colour[0], colour[1], colour[2], 255], at);
    }
  }
  context.putImageData(pixels, 0, 0);
}

clearAll();
