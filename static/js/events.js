// What the page knows about events: which filter group a kind belongs to, which
// sentence variant fits one event, and the values its sentence can name.
// The sentences themselves are data, in static/i18n/<lang>.json under "events".

// Filter groups, in the order the chips are shown. A kind's group comes from
// its prefix; prefixes not listed here fall into "other".
export const GROUPS = ["ns", "cgroup", "mount", "process", "oom", "container",
                       "image", "blob", "volume", "other", "sampled"];

const GROUP_OF_PREFIX = {
  ns: "ns", userns: "ns", hostname: "ns", net: "ns",  // UTS and net are namespaces too
  cgroup: "cgroup",
  mount: "mount", rootfs: "mount", paths: "mount",
  process: "process", helper: "process", lockdown: "process",
  oom: "oom", pids: "oom", quota: "oom",  // limits the kernel or the classroom enforced
  container: "container",
  image: "image", layer: "image", build: "image",
  blob: "blob",
  volume: "volume",
};

// cgroup.sampled arrives twice a second per running container: it feeds the
// charts and has a chip of its own, off by default.
export function groupOf(kind) {
  if (kind === "cgroup.sampled") return "sampled";
  return GROUP_OF_PREFIX[kind.split(".")[0]] || "other";
}

// The subject keys, most specific first: the id a row shows.
const SUBJECT_KEYS = ["container", "build", "image", "layer", "blob", "volume"];

export function shortId(value) {
  if (value == null) return "";
  const text = Array.isArray(value) ? value.join(", ") : String(value);
  return text.replace(/^sha256:/, "").slice(0, 12);
}

export function subjectId(event) {
  const subject = event.subject || {};
  for (const key of SUBJECT_KEYS) {
    if (subject[key] != null) return subject[key];
  }
  const any = Object.values(subject)[0];
  return any == null ? "" : any;
}

export function containerOf(event) {
  return (event.subject && event.subject.container) || null;
}

export function humanBytes(bytes) {
  if (bytes == null || Number.isNaN(Number(bytes))) return null;
  let value = Number(bytes);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

const SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 6: "SIGABRT", 9: "SIGKILL",
                 10: "SIGUSR1", 12: "SIGUSR2", 15: "SIGTERM"};

function signalName(value) {
  if (value == null) return "?";
  return SIGNALS[value] || (typeof value === "string" ? value : `signal ${value}`);
}

// CLONE_NEWNS is the mount namespace: the one flag whose name doesn't say so.
function namespaceNames(flags) {
  return (flags || []).map((flag) => {
    const name = String(flag).replace(/^CLONE_NEW/, "").toLowerCase();
    return name === "ns" ? "mnt" : name;
  }).join(", ");
}

function command(argv) {
  const text = Array.isArray(argv) ? argv.join(" ") : String(argv || "");
  return text.length > 60 ? `${text.slice(0, 59)}…` : text;
}

// A duration as a person reads it: 0.0048 → "0.005", 12.3456 → "12.3".
function seconds(value) {
  if (value == null || Number.isNaN(Number(value))) return null;
  const v = Number(value);
  return v < 10 ? String(Number(v.toFixed(3))) : String(Number(v.toFixed(1)));
}

// Which sentence fits: "kind#variant" when the JSON has it, else "kind".
export function variantOf(event) {
  const d = event.detail || {};
  switch (event.kind) {
    case "process.started":
      return d.exec ? "exec" : "";
    case "process.exited":
      if (d.exec) return "exec";
      if (d.error) return "error";
      if (d.oom_killed) return "oom";
      if (d.timed_out) return "timeout";
      if (d.signal) return "signal";
      return "";
    case "mount.removed":
      return String(d.what || "").startsWith("writable") ? "writable" : "";
    case "volume.mounted":
      return d.readonly ? "ro" : "";
    case "volume.created":
      return d.anonymous ? "anonymous" : "";
    case "layer.created":
      return d.from === "commit" ? "commit" : "";
    case "build.cache_hit":
      return d.layer ? "" : "config";
    case "blob.skipped":
      return d.direction === "pull" ? "pull" : "push";
    case "oom.killed":
      return d.memory_limit ? "" : "nolimit";
    case "build.done":
      return (d.tags || []).length ? "" : "untagged";
    default:
      return "";
  }
}

// The values a sentence may name: the detail's own fields (lists joined),
// plus a few made readable (sizes, counts, names). `unlimited` is the
// current language's word for a missing limit.
export function eventParams(event, unlimited) {
  const d = event.detail || {};
  const subject = event.subject || {};
  const params = {kind: event.kind};
  for (const [key, value] of Object.entries(d)) {
    if (value == null) continue;
    if (Array.isArray(value)) params[key] = value.join(", ");
    else if (typeof value === "object") params[key] = JSON.stringify(value);
    else params[key] = value;
  }
  for (const [key, value] of Object.entries(subject)) {
    if (params[key] == null && value != null) params[key] = Array.isArray(value) ? value.join(", ") : value;
  }
  params.id = shortId(subjectId(event));
  params.name = subject.name || d.name || params.id;
  const limitOrNone = (v, show = (x) => x) => (v == null ? unlimited : show(v));

  switch (event.kind) {
    case "ns.unshared":
      params.namespaces = namespaceNames(d.flags);
      break;
    case "userns.mapped": {
      const [, hostUid, count] = String(d.uid_map || "").split(/\s+/);
      params.host_uid = hostUid || "?";
      params.count = count || "?";
      break;
    }
    case "mount.tmpfs": {
      const size = /size=(\d+)/.exec(d.options || "");
      params.size = size ? humanBytes(Number(size[1])) : "?";
      break;
    }
    case "mount.overlay":
      params.layer_count = (d.layers || []).length;
      break;
    case "paths.masked":
      params.masked_count = (d.masked || []).length;
      params.readonly_count = (d.readonly || []).length;
      break;
    case "lockdown.applied":
      params.caps_kept_count = (d.caps_kept || []).length;
      break;
    case "process.started":
      params.command = command(d.argv);
      break;
    case "process.exited":
      params.command = command(d.argv);
      params.runtime_seconds = seconds(d.runtime_seconds);
      break;
    case "oom.killed":
      params.memory_limit = limitOrNone(d.memory_limit, humanBytes);
      break;
    case "pids.limited":
      params.pids_limit = limitOrNone(d.pids_limit);
      break;
    case "cgroup.created":
      params.memory = limitOrNone(d.memory_bytes, humanBytes);
      params.pids = limitOrNone(d.pids);
      params.cpus = limitOrNone(d.cpus);
      break;
    case "cgroup.sampled":
      params.memory = humanBytes(d.memory_bytes) || "?";
      params.pids = d.pids == null ? "?" : d.pids;
      params.cpu = d.cpu_usec == null ? "?" : (d.cpu_usec / 1e6).toFixed(2);
      break;
    case "container.stop":
    case "container.kill":
      params.signal_name = signalName(d.signal);
      break;
    case "quota.reached":
      params.limit = d.quota === "running_memory" ? humanBytes(d.limit) : d.limit;
      break;
    case "log.truncated":
      params.limit = humanBytes(d.limit_bytes) || "?";
      break;
    case "engine.reconciled":
      params.containers_count = (d.containers || []).length;
      params.mounts_count = (d.mounts || []).length;
      params.cgroups_count = (d.cgroups || []).length;
      break;
    case "layer.created":
      params.layer_short = shortId(d.layer || subject.layer);
      params.size = humanBytes(d.size) || "?";
      break;
    case "build.cache_hit":
      params.layer_short = shortId(d.layer);
      break;
    case "build.done":
      params.image_short = shortId(d.image);
      params.seconds = seconds(d.seconds);
      break;
    case "image.pushed":
      params.bytes = humanBytes(d.bytes_uploaded) || "0 B";
      break;
    case "image.pulled":
      params.bytes = humanBytes(d.bytes_downloaded) || "0 B";
      break;
    default:
      break;
  }
  if (event.kind.startsWith("blob.")) params.size = humanBytes(d.bytes) || "?";
  return params;
}
