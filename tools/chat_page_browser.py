#!/usr/bin/env python3
"""The chat page at `/` in a real browser: Debian's `chromium`, headless, driven by Playwright.

Starts `kiln`'s `serve` example on an ephemeral loopback port (the address is read from its
"serving ... on http://HOST:PORT" line), opens the page, sends a message, and checks:
- the model picker lists `base` (filled from `GET /v1/models`);
- the reply streams: the assistant bubble takes several growing values before it is complete
  (recorded in the page by a MutationObserver), and the final text equals the unstreamed greedy
  reply of `POST /v1/chat/completions` for the same messages;
- the Stop button ends a long reply early, the server logs that request as 499 (client
  closed) and the page accepts a new message;
then saves a screenshot. Exits non-zero on any failed check.

    apt-get install -y chromium
    python3 -m venv /tmp/kiln-browser && /tmp/kiln-browser/bin/pip install -r tools/requirements-browser.txt
    cargo build --features serve --example serve
    /tmp/kiln-browser/bin/python tools/chat_page_browser.py \\
        [--server target/debug/examples/serve] [--model ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf] \\
        [--screenshot target/chat_page.png]

`.ci/run` installs both and runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MESSAGE = "Name three colours."
MAX_TOKENS = 24


def start_server(binary: Path, model: Path) -> tuple[subprocess.Popen, str, list[str]]:
    cmd = [str(binary), "--model", str(model), "--quantize", "stored", "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:  # keeps draining stderr (the access log) so the server never blocks on it
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())
            m = re.search(r"serving .* on (http://\S+)", line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(300) or not found:
        proc.kill()
        sys.exit("the server did not start:\n" + "\n".join(lines[-20:]))
    return proc, found[0], lines


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


# Records every value the last assistant bubble takes while the reply streams.
OBSERVER = """
window.__values = [];
new MutationObserver(() => {
  const all = document.querySelectorAll('#log .msg.assistant');
  if (all.length) window.__values.push(all[all.length - 1].textContent);
}).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
"""


def check_page(base_url: str, chromium: str, screenshot: Path, log: list[str] | None = None) -> None:
    """The checks on a server at `base_url`; `log`: its access-log lines, as they arrive (the
    Stop check then waits for the cancelled request's 499 line)."""
    from playwright.sync_api import sync_playwright

    want = post(f"{base_url}/v1/chat/completions", {
        "model": "base", "messages": [{"role": "user", "content": MESSAGE}],
        "max_tokens": MAX_TOKENS, "temperature": 0,
    })["choices"][0]["message"]["content"]
    assert want, "the unstreamed reply is empty"
    with sync_playwright() as pw:
        # --no-sandbox: Chromium's sandbox refuses to run as root (CI runs as root).
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.goto(base_url + "/")
        page.wait_for_function("document.querySelector('#model option') !== null")
        models = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
        assert "base" in models, models
        page.evaluate(OBSERVER)
        page.fill("#max", str(MAX_TOKENS))
        page.fill("#temp", "0")
        page.fill("#input", MESSAGE)
        page.press("#input", "Enter")
        page.wait_for_selector("#stop:enabled", timeout=60_000)
        page.wait_for_selector("#send:enabled", timeout=300_000)
        reply = page.text_content("#log .msg.assistant")
        values = [v for v in page.evaluate("window.__values") if v]
        growing = sorted(set(values), key=len)
        print(f"reply {reply!r}; the bubble took {len(growing)} distinct values while streaming")
        assert page.query_selector("#log .msg.error") is None, page.text_content("#log .msg.error")
        assert reply == want, f"streamed {reply!r} != unstreamed {want!r}"
        assert len(growing) >= 2 and all(want.startswith(v) for v in growing), growing
        page.screenshot(path=str(screenshot))
        print(f"screenshot: {screenshot}")
        # Stop: a long reply ends early and the page takes the next message.
        page.fill("#max", "2000")
        page.fill("#temp", "1")
        page.fill("#input", "Write a long story about a kiln.")
        page.press("#input", "Enter")
        page.wait_for_function(
            "[...document.querySelectorAll('#log .msg.assistant')].length == 2 && "
            "document.querySelectorAll('#log .msg.assistant')[1].textContent.length > 0",
            timeout=120_000,
        )
        assert page.is_enabled("#stop"), "the long reply ended before Stop could be clicked"
        page.click("#stop")
        page.wait_for_selector("#send:enabled", timeout=10_000)
        stopped = page.eval_on_selector_all("#log .msg.assistant", "m => m[1].textContent")
        assert page.query_selector("#log .msg.error") is None
        print(f"stopped after {len(stopped)} characters")
        if log is not None:
            # The server saw the client leave: the streamed request is logged with 499.
            deadline = time.time() + 30
            while not any('"status":499' in line for line in log):
                assert time.time() < deadline, "no 499 access-log line after Stop:\n" + "\n".join(log[-5:])
                time.sleep(0.2)
            print("the server logged the stopped request as 499 (client closed)")
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    ap.add_argument("--server", type=Path, default=target / "debug" / "examples" / "serve")
    ap.add_argument("--model", type=Path,
                    default=Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))
                    / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--screenshot", type=Path, default=target / "chat_page.png")
    args = ap.parse_args()
    for path, what in [(args.server, "the serve example (cargo build --features serve --example serve)"),
                       (args.model, "the model"), (Path(args.chromium), "chromium (apt-get install chromium)")]:
        if not path.exists():
            sys.exit(f"missing {what}: {path}")
    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    proc, url, lines = start_server(args.server, args.model)
    try:
        check_page(url, args.chromium, args.screenshot, lines)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"chat page check passed in {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
