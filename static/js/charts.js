// Small live line charts (inline SVG): the last readings of one cgroup value,
// drawn against its limit when there is one, so a student sees how close the
// container is to what the kernel will enforce.
const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 200;
const HEIGHT = 48;
export const POINTS = 60;

function svg(name, attrs = {}) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  return el;
}

export class Chart {
  constructor(parent, metric) {
    this.figure = document.createElement("figure");
    this.figure.className = "chart";
    this.figure.dataset.metric = metric;

    const caption = document.createElement("figcaption");
    this.name = document.createElement("span");
    this.name.className = "chart-name";
    this.value = document.createElement("span");
    this.value.className = "chart-value";
    this.limit = document.createElement("span");
    this.limit.className = "chart-limit";
    caption.append(this.name, this.value, this.limit);

    this.svg = svg("svg", {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none",
                           "aria-hidden": "true"});
    this.limitLine = svg("line", {class: "chart-limit-line", x1: 0, x2: WIDTH, y1: 1, y2: 1});
    this.area = svg("path", {class: "chart-area"});
    this.line = svg("polyline", {class: "chart-line", fill: "none"});
    this.svg.append(this.limitLine, this.area, this.line);

    this.figure.append(caption, this.svg);
    parent.append(this.figure);
  }

  // values: numbers or null (no reading), oldest first; the newest sits at
  // the right edge. With a limit the scale is the limit (a full chart means
  // "at the limit"); without one, the largest value plus some headroom.
  // `floor`: the smallest top of the scale, so that noise near zero (a few
  // KiB, a thousandth of a CPU) doesn't fill a chart that has no limit.
  update({name, values, limit, floor = 0, valueText, limitText}) {
    this.name.textContent = name;
    this.value.textContent = valueText;
    this.limit.textContent = limitText || "";
    const recent = values.slice(-POINTS);
    const known = recent.filter((v) => v != null);
    const peak = known.length ? Math.max(...known) : 0;
    const top = limit ? Math.max(limit, peak) : Math.max(peak * 1.25, floor) || 1;
    const step = WIDTH / (POINTS - 1);
    const offset = WIDTH - (recent.length - 1) * step;
    const points = [];
    recent.forEach((v, i) => {
      if (v == null) return;
      const x = offset + i * step;
      const y = HEIGHT - 1 - (v / top) * (HEIGHT - 2);
      points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    this.line.setAttribute("points", points.join(" "));
    if (points.length > 1) {
      const first = points[0].split(",")[0];
      const last = points[points.length - 1].split(",")[0];
      this.area.setAttribute("d", `M${first},${HEIGHT} L${points.join(" L")} L${last},${HEIGHT} Z`);
    } else {
      this.area.setAttribute("d", "");
    }
    const limitY = limit ? HEIGHT - 1 - (limit / top) * (HEIGHT - 2) : -10;
    this.limitLine.setAttribute("y1", limitY);
    this.limitLine.setAttribute("y2", limitY);
    const latest = known.length ? known[known.length - 1] : 0;
    this.figure.classList.toggle("near-limit", Boolean(limit) && latest >= 0.9 * limit);
  }
}
