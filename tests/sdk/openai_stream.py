"""Streams a chat completion through a lendmesh gateway with the official OpenAI SDK, the way chat tools do.

Usage: openai_stream.py GATEWAY_URL

Prints one line per chunk as it arrives (flushed): `CHUNK <content>`, then `END` once the stream is over, or
`ERROR <type>: <message>` if the SDK raised. The calling test lets the upstream send each next chunk only after it
has read the previous line, so the output proves the SDK saw the chunks one by one.
"""

import sys

import openai


def main() -> int:
    client = openai.OpenAI(base_url=sys.argv[1].rstrip("/") + "/v1", api_key="tool-key", max_retries=0, timeout=60)
    try:
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        for chunk in stream:
            content = chunk.choices[0].delta.content if chunk.choices else None
            print(f"CHUNK {content}", flush=True)
    except Exception as e:  # noqa: BLE001 - the test reads what happened
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
        return 1
    print("END", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
