// A body map for a questionnaire's "where" question: the figure from the front and from the
// back, each region a place code of the questionnaire's options (dermatology's location,
// wound care's). A click on a region chooses it in the list next to it, which stays the
// control for the keyboard and the screen reader (the figure is hidden from them).
const SVG = "http://www.w3.org/2000/svg";

// [code, shape, attributes] in a 120 x 300 figure. Front: the patient faces you (their left
// is on your right); back: their left is on your left.
const FRONT = [
  ["scalp", "ellipse", { cx: 60, cy: 16, rx: 15, ry: 9 }],
  ["face", "ellipse", { cx: 60, cy: 33, rx: 14, ry: 12 }],
  ["neck", "rect", { x: 53, y: 45, width: 14, height: 11 }],
  ["chest", "rect", { x: 38, y: 56, width: 44, height: 40, rx: 6 }],
  ["abdomen", "rect", { x: 40, y: 96, width: 40, height: 36, rx: 4 }],
  ["hip_right", "rect", { x: 36, y: 132, width: 14, height: 18, rx: 3 }],
  ["hip_left", "rect", { x: 70, y: 132, width: 14, height: 18, rx: 3 }],
  ["genitals", "rect", { x: 52, y: 132, width: 16, height: 18, rx: 3 }],
  ["arm_right", "rect", { x: 22, y: 58, width: 14, height: 74, rx: 6 }],
  ["arm_left", "rect", { x: 84, y: 58, width: 14, height: 74, rx: 6 }],
  ["hand_right", "ellipse", { cx: 29, cy: 142, rx: 8, ry: 10 }],
  ["hand_left", "ellipse", { cx: 91, cy: 142, rx: 8, ry: 10 }],
  ["leg_right", "rect", { x: 40, y: 150, width: 18, height: 108, rx: 6 }],
  ["leg_left", "rect", { x: 62, y: 150, width: 18, height: 108, rx: 6 }],
  ["ankle_right", "rect", { x: 42, y: 258, width: 14, height: 10 }],
  ["ankle_left", "rect", { x: 64, y: 258, width: 14, height: 10 }],
  ["foot_right", "ellipse", { cx: 46, cy: 278, rx: 11, ry: 8 }],
  ["foot_left", "ellipse", { cx: 74, cy: 278, rx: 11, ry: 8 }],
];
const BACK = [
  ["scalp", "ellipse", { cx: 60, cy: 27, rx: 15, ry: 18 }],
  ["neck", "rect", { x: 53, y: 45, width: 14, height: 11 }],
  ["upper_back", "rect", { x: 38, y: 56, width: 44, height: 40, rx: 6 }],
  ["lower_back", "rect", { x: 40, y: 96, width: 40, height: 30, rx: 4 }],
  ["buttocks", "rect", { x: 38, y: 126, width: 44, height: 24, rx: 8 }],
  ["sacrum", "rect", { x: 52, y: 118, width: 16, height: 14, rx: 3 }],
  ["arm_left", "rect", { x: 22, y: 58, width: 14, height: 74, rx: 6 }],
  ["arm_right", "rect", { x: 84, y: 58, width: 14, height: 74, rx: 6 }],
  ["hand_left", "ellipse", { cx: 29, cy: 142, rx: 8, ry: 10 }],
  ["hand_right", "ellipse", { cx: 91, cy: 142, rx: 8, ry: 10 }],
  ["leg_left", "rect", { x: 40, y: 150, width: 18, height: 108, rx: 6 }],
  ["leg_right", "rect", { x: 62, y: 150, width: 18, height: 108, rx: 6 }],
  ["ankle_left", "rect", { x: 42, y: 258, width: 14, height: 10 }],
  ["ankle_right", "rect", { x: 64, y: 258, width: 14, height: 10 }],
  ["heel_left", "ellipse", { cx: 49, cy: 276, rx: 9, ry: 7 }],
  ["heel_right", "ellipse", { cx: 71, cy: 276, rx: 9, ry: 7 }],
];
const MAPPED = new Set([...FRONT, ...BACK].map(([code]) => code));
const ENOUGH = 4; // fewer of a field's options on the figure: a list is enough

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

/** Whether a choice with these options is a place on the body. */
export function isBodyMap(options) {
  return options.filter((o) => MAPPED.has(o)).length >= ENOUGH;
}

/**
 * The figure for ``select`` (a choice of places): clicking a region chooses it there; the
 * regions follow the list's value. Regions are drawn only for codes among the options.
 */
export function bodyMap(select) {
  const options = new Set([...select.options].map((o) => o.value).filter(Boolean));
  const root = svg("svg", { viewBox: "0 0 260 300", class: "bodymap-svg", "aria-hidden": "true", focusable: "false" });
  const regions = [];
  [[FRONT, 0], [BACK, 140]].forEach(([shapes, dx]) => {
    const group = svg("g", { transform: `translate(${dx} 0)` });
    group.append(svg("path", { class: "outline", d: "M60 4 C40 4 40 50 60 50 C80 50 80 4 60 4 Z M30 56 H90 L100 140 H84 L82 150 "
      + "V290 H38 V150 L36 140 H20 Z" }));
    for (const [code, tag, attrs] of shapes) {
      if (!options.has(code)) continue;
      const shape = svg(tag, { ...attrs, class: "region", "data-code": code });
      shape.addEventListener("click", () => {
        select.value = code;
        select.dispatchEvent(new Event("change", { bubbles: true }));
      });
      regions.push(shape);
      group.append(shape);
    }
    root.append(group);
  });
  const render = () => {
    for (const r of regions) r.classList.toggle("on", r.dataset.code === select.value);
  };
  select.addEventListener("change", render);
  render();
  return root;
}
