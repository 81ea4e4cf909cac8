// Small DOM builders shared by the lesson panel and the dashboard. Text is always
// set as text (textContent), never parsed as HTML.
const SVG = "http://www.w3.org/2000/svg";

// el("li", {class: "x", text: "y", "aria-label": "z"}, ...children)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

export function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}
