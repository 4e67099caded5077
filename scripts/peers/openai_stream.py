"""An off-the-shelf client: the official `openai` package against lab's mock or proxy.

Usage: openai_stream.py BASE_URL MODEL PROMPT [CA_FILE]
Prints one JSON object: the streamed tokens, finish reason and usage, the non-streamed
answer, and the listed models.
"""
import json
import sys

import openai

base, model, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
ca = sys.argv[4] if len(sys.argv) > 4 else None
client = openai.OpenAI(
    base_url=base.rstrip("/") + "/v1",
    api_key="lab",
    max_retries=0,
    http_client=openai.DefaultHttpxClient(verify=ca) if ca else None,
)
messages = [{"role": "user", "content": prompt}]
tokens, finish, usage = [], None, None
stream = client.chat.completions.create(
    model=model, messages=messages, stream=True, stream_options={"include_usage": True}
)
for chunk in stream:
    if chunk.choices:
        choice = chunk.choices[0]
        if choice.delta.content:
            tokens.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
    if chunk.usage:
        usage = chunk.usage.model_dump()
full = client.chat.completions.create(model=model, messages=messages, stream=False)
print(
    json.dumps(
        {
            "tokens": tokens,
            "finish": finish,
            "usage": usage,
            "content": full.choices[0].message.content,
            "models": [m.id for m in client.models.list()],
        }
    )
)
