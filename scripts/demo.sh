#!/usr/bin/env bash
# `make demo`: run `ctvqa demo`, under xvfb-run (saving a screenshot) when there is no display.
# Extra arguments go to `ctvqa demo` (e.g. `make demo` -> `bash scripts/demo.sh --model DIR`).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
if [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; then
  .venv/bin/ctvqa demo "$@"
else
  if ! command -v xvfb-run >/dev/null; then
    echo "make demo: no display and no xvfb-run; install it (apt-get install xvfb) or run on a desktop" >&2
    exit 1
  fi
  shot=${CTVQA_SCREENSHOT:-ctvqa-demo/screenshot.png}
  mkdir -p "$(dirname "$shot")"
  xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/ctvqa demo --screenshot "$shot" "$@"
  echo "make demo: no display, so the window was saved to $shot"
fi
echo "make demo: took $(( $(date +%s) - start )) s"
