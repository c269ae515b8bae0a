/**
 * Usage history as an SVG line chart, one per metric key.
 *
 * Hand-written rather than a charting library: the page draws one series of at most a few
 * hundred daily samples per chart, which is a path, two axis labels and a hover marker. SVG
 * takes its colours from the stylesheet (so both themes apply without script), scales with
 * its box, and keeps the figures reachable: the chart is focusable (arrow keys move the
 * read-out, Home/End jump) and every sample is in a table beside it.
 */

import { h } from "preact";
import { useState } from "preact/hooks";
import htm from "htm";
import { formatAmount, formatDate } from "./format.js";

const html = htm.bind(h);

const WIDTH = 600;
const HEIGHT = 180;
const PAD = { top: 12, right: 12, bottom: 26, left: 12 };

function extent(values) {
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (min === max) {
    // A flat series still needs a range to draw in: centre it.
    const pad = Math.abs(min) * 0.1 || 1;
    return [min - pad, max + pad];
  }
  return [Math.min(0, min), max];
}

/**
 * @param {{label: string, unit: string, samples: {at: string, value: number}[], id: string}} props
 */
export function HistoryChart({ label, unit, samples, id }) {
  const [active, setActive] = useState(samples.length - 1);
  const times = samples.map((s) => new Date(s.at).getTime());
  const values = samples.map((s) => s.value);
  const [low, high] = extent(values);
  const t0 = times[0];
  const t1 = times[times.length - 1];
  const span = t1 - t0 || 1;
  const innerW = WIDTH - PAD.left - PAD.right;
  const innerH = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + (samples.length === 1 ? innerW / 2 : ((t - t0) / span) * innerW);
  const y = (v) => PAD.top + innerH - ((v - low) / (high - low)) * innerH;
  const points = samples.map((s, i) => `${x(times[i]).toFixed(1)},${y(s.value).toFixed(1)}`);
  const line = `M${points.join("L")}`;
  const area = `${line}L${x(t1).toFixed(1)},${PAD.top + innerH}L${x(t0).toFixed(1)},${PAD.top + innerH}Z`;
  const current = samples[Math.min(active, samples.length - 1)];
  const first = samples[0];
  const last = samples[samples.length - 1];
  const summary =
    `${label}: ${samples.length} samples from ${formatDate(first.at)} (${formatAmount(first.value, unit)}) ` +
    `to ${formatDate(last.at)} (${formatAmount(last.value, unit)})`;

  const pick = (event) => {
    const box = event.currentTarget.getBoundingClientRect();
    if (!box.width) return;
    const at = t0 + ((((event.clientX - box.left) / box.width) * WIDTH - PAD.left) / innerW) * span;
    let nearest = 0;
    for (let i = 1; i < times.length; i += 1) {
      if (Math.abs(times[i] - at) < Math.abs(times[nearest] - at)) nearest = i;
    }
    setActive(nearest);
  };
  const step = (event) => {
    const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowDown: -1, ArrowUp: 1 };
    let next = active;
    if (event.key in moves) next = active + moves[event.key];
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = samples.length - 1;
    else return;
    event.preventDefault();
    setActive(Math.max(0, Math.min(samples.length - 1, next)));
  };
  const cx = x(new Date(current.at).getTime());
  const cy = y(current.value);

  return html`
    <figure class="chart" data-history-key=${id}>
      <figcaption class="chart-title">${label}</figcaption>
      <div
        class="chart-box"
        tabindex="0"
        role="group"
        aria-label=${`${summary}. Arrow keys move through the samples.`}
        onPointerMove=${pick}
        onKeyDown=${step}
      >
        <svg viewBox=${`0 0 ${WIDTH} ${HEIGHT}`} aria-hidden="true" focusable="false">
          <line class="chart-axis" x1=${PAD.left} x2=${WIDTH - PAD.right} y1=${PAD.top + innerH} y2=${PAD.top + innerH} />
          <path class="chart-area" d=${area} />
          <path class="chart-line" d=${line} vector-effect="non-scaling-stroke" />
          <line class="chart-cursor" x1=${cx} x2=${cx} y1=${PAD.top} y2=${PAD.top + innerH} vector-effect="non-scaling-stroke" />
          <circle class="chart-dot" cx=${cx} cy=${cy} r="4" />
        </svg>
        <div class="chart-scale" aria-hidden="true">
          <span>${formatDate(first.at)}</span>
          <span>max ${formatAmount(Math.max(...values), unit)}</span>
          <span>${formatDate(last.at)}</span>
        </div>
      </div>
      <p class="chart-readout">
        <time datetime=${current.at}>${formatDate(current.at)}</time>: <strong>${formatAmount(current.value, unit)}</strong>
      </p>
      <details class="chart-data">
        <summary>Samples as a table</summary>
        <div class="scroll-box">
          <table>
            <caption class="visually-hidden">${label} history</caption>
            <thead><tr><th scope="col">Date</th><th scope="col">Value</th></tr></thead>
            <tbody>
              ${samples.map(
                (s) => html`<tr key=${s.at}><td><time datetime=${s.at}>${formatDate(s.at)}</time></td><td>${formatAmount(s.value, unit)}</td></tr>`,
              )}
            </tbody>
          </table>
        </div>
      </details>
    </figure>
  `;
}
