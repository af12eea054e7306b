"""Drives a running `kiln` server with the official `openai` Python client (chat, streaming,
completions, models, errors) and checks what the client parsed.

    cargo run --release --features serve --example serve -- --port 8080 &
    python tools/openai_client_check.py --base-url http://127.0.0.1:8080/v1 [--api-key KEY] [--adapter NAME]

Needs `pip install openai` (not part of CI: CI never runs Python). Exits non-zero on the first
failed check.
"""
import argparse

import openai


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--adapter", default=None, help="an adapter name to request as model")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)

    ids = [m.id for m in client.models.list().data]
    assert "base" in ids, ids
    print("models:", ids)

    messages = [{"role": "user", "content": "Name three colours."}]
    chat = client.chat.completions.create(model="base", messages=messages, max_tokens=24, temperature=0)
    text = chat.choices[0].message.content
    assert chat.object == "chat.completion" and text, chat
    assert chat.usage.completion_tokens > 0 and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    print("chat:", repr(text), chat.choices[0].finish_reason, chat.usage)

    stream = client.chat.completions.create(model="base", messages=messages, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == text, ("".join(parts), text)
    assert finish == chat.choices[0].finish_reason and usage.completion_tokens == chat.usage.completion_tokens
    print("chat stream: equal to the unstreamed text,", finish, usage)

    comp = client.completions.create(model="base", prompt="The capital of France is", max_tokens=8, temperature=0)
    comp_stream = client.completions.create(model="base", prompt="The capital of France is", max_tokens=8,
                                            temperature=0, stream=True)
    streamed = "".join(c.choices[0].text for c in comp_stream if c.choices)
    assert streamed == comp.choices[0].text, (streamed, comp.choices[0].text)
    print("completion:", repr(comp.choices[0].text), "(streamed equal)")

    if args.adapter:
        a = client.chat.completions.create(model=args.adapter, messages=messages, max_tokens=24, temperature=0)
        print(f"adapter {args.adapter}:", repr(a.choices[0].message.content))

    try:
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
        print("unknown model: 404", e.body["code"])
    try:
        client.completions.create(model="base", prompt="x", max_tokens=0)
        raise AssertionError("max_tokens 0 accepted")
    except openai.BadRequestError as e:
        print("max_tokens 0: 400", e.body["message"])
    print("all checks passed")


if __name__ == "__main__":
    main()
