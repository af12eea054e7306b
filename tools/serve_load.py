"""Bounded load test of a local kiln server (loopback only; stops by itself): C clients each
send streaming chat requests back to back for D seconds; reports time to first token (p50/p99),
aggregate completion tokens/s, per-request latency and errors. Standard library only.

    python tools/serve_load.py --url http://127.0.0.1:8080 --clients 1 4 8 --seconds 30 \
        [--models base,census] [--max-tokens 64] [--api-key KEY]
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

PROMPTS = [
    "Write one sentence about the sea.",
    "List three fruits.",
    "What is the capital of Italy?",
    "Explain what a compiler does in one sentence.",
    "Give me a short greeting.",
    "Name a famous painter.",
]


def one_request(host, port, model, prompt, max_tokens, key, lenient_end=False):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    conn = http.client.HTTPConnection(host, port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        resp.read()
        conn.close()
        return {"error": resp.status}
    ttft, tokens, done, buf = None, 0, False, b""
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for c in chunk.get("choices", []):
            if c.get("delta", {}).get("content") and ttft is None:
                ttft = time.perf_counter() - start
            # transformers serve ends its streams with a finish_reason chunk carrying usage,
            # without OpenAI's `data: [DONE]`.
            if lenient_end and c.get("finish_reason") and chunk.get("usage"):
                done = True
    conn.close()
    end = time.perf_counter() - start
    if not done:
        return {"error": "incomplete stream"}
    return {"ttft": ttft if ttft is not None else end, "latency": end, "tokens": tokens}


def run(url, clients, seconds, models, max_tokens, key, lenient_end=False):
    u = urllib.parse.urlparse(url)
    results, lock = [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(i):
        k = 0
        while time.perf_counter() < deadline:
            model = models[(i + k) % len(models)]
            r = one_request(u.hostname, u.port, model, PROMPTS[(i + k) % len(PROMPTS)], max_tokens, key,
                            lenient_end)
            r["end"] = time.perf_counter()
            with lock:
                results.append(r)
            k += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttfts = sorted(r["ttft"] for r in ok)
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "requests": len(ok), "errors": len(errors), "wall_s": round(wall, 1),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "ttft_p50_s": round(q(ttfts, 0.5), 3), "ttft_p99_s": round(q(ttfts, 0.99), 3),
            "latency_mean_s": round(statistics.mean(r["latency"] for r in ok), 3) if ok else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--models", default="base")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--lenient-end", action="store_true",
                    help="accept a stream that ends with its finish_reason + usage chunk and no "
                         "`data: [DONE]` (transformers serve)")
    args = ap.parse_args()
    host = urllib.parse.urlparse(args.url).hostname
    assert host in ("127.0.0.1", "localhost", "::1"), "loopback only"
    rows = []
    for c in args.clients:
        r = run(args.url, c, args.seconds, args.models.split(","), args.max_tokens, args.api_key,
                args.lenient_end)
        print(json.dumps(r), flush=True)
        rows.append(r)
    if len(rows) > 1 and rows[0]["tokens_per_s"]:
        for r in rows[1:]:
            print(f"{r['clients']} clients / {rows[0]['clients']}: {r['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x tokens/s")


if __name__ == "__main__":
    main()
