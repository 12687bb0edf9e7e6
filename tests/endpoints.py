"""The LLM endpoints the tests talk to.

* :class:`FakeOpenAI`: a loopback OpenAI-compatible chat endpoint (stdlib ``http.server``
  in a thread on 127.0.0.1:0) that answers from a script: 429 with Retry-After, 500,
  slow replies, unparseable content, or a given reply. Only the remote endpoint is
  faked, at the HTTP boundary.
* :func:`llama_server_pids`: the live processes of the real embedded llama.cpp server.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from facsynth.graph.prompts import NEGATIVE, POSITIVE


def llama_server_pids(started_by: int | None = None) -> list[int]:
    """PIDs of live embedded-server processes (a /proc scan), optionally only those started by one PID.

    The embedded server's command line is ``python -m facsynth.agent.server PARENT_PID ...``
    (or ``-m llama_cpp.server``); filtering on the parent keeps other sessions' servers out.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z" or b"--model_alias" not in cmdline:
            continue
        if b"facsynth.agent.server" in cmdline:
            parent = cmdline[cmdline.index(b"facsynth.agent.server") + 1]
            if started_by is None or parent == str(started_by).encode():
                pids.append(int(entry.name))
        elif b"llama_cpp.server" in cmdline and started_by is None:
            pids.append(int(entry.name))
    return pids


# -- the scripted fake endpoint -----------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer of :class:`FakeOpenAI`."""

    status: int = 200
    content: str = "ok"
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    tokens: tuple[int, int] = (11, 3)
    message: str | None = None
    """Error message of a non-200 reply (default: ``scripted <status>``)."""
    echo_auth: bool = False
    """Put the request's Authorization header into the error message (a careless server)."""
    tool_calls: list[tuple[str, dict[str, Any]]] | None = None
    """Answer with these tool calls, ``(name, arguments)``, instead of content."""


@dataclass
class Seen:
    """One request as the fake endpoint received it (header names in lower case)."""

    body: dict[str, Any]
    headers: dict[str, str]
    at: float


class FakeOpenAI:
    """A loopback OpenAI-compatible ``/v1/chat/completions`` that answers from a script.

    ``script`` is consumed one reply per request; when it is empty ``default`` answers.
    Either may hold a callable that writes the :class:`Reply` from the request body.
    ``requests`` keeps every request, ``max_in_flight`` the peak of concurrent ones.
    """

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}, {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.requests.append(Seen(body, {k.lower(): v for k, v in self.headers.items()}, time.monotonic()))
                    reply = fake.script.popleft() if fake.script else fake.default
                    if callable(reply):  # a reply written from the request
                        reply = reply(body)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    if reply.status != 200:
                        message = reply.message or f"scripted {reply.status}"
                        if reply.echo_auth:
                            message += f" (you sent {self.headers.get('Authorization')})"
                        error = {"error": {"message": message, "type": "scripted", "code": reply.status}}
                        self._send(reply.status, error, reply.headers)
                    else:
                        self._send(200, _completion(body, reply), reply.headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): nothing to answer
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-openai", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def queue(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    tokens_in, tokens_out = reply.tokens
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    finish = "stop"
    if reply.tool_calls:
        message = {
            "role": "assistant", "content": None,
            "tool_calls": [
                {"id": f"call_{i}_{uuid.uuid4().hex[:8]}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}
                for i, (name, args) in enumerate(reply.tool_calls)
            ],
        }
        finish = "tool_calls"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake-model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out},
    }


NEGATIVES = [
    "A calm walk along the quiet river at dusk, with nothing much to say about it.",
    "My grandmother keeps her buttons in an old biscuit tin on the kitchen shelf.",
    "The train to the coast was late again, so we shared a thermos of tea on the platform.",
    "Our neighbour paints the fence every spring, always the same pale green.",
    "The library opens at nine, but the reading room fills up before ten.",
    "He folded the map badly and gave up trying to put it back in the glovebox.",
    "Rain drummed on the tin roof of the shed all through the long afternoon.",
    "She labelled every jar in the pantry with the date it was filled.",
]
_calls = itertools.count()


def echo_snippet(body: dict[str, Any]) -> Reply:
    """A generator reply built from the prompt: the first snippet's last words (those that
    fire the target in the anchor) as the positive, a fixed unrelated text as the negative. It makes
    runs on the fake endpoint accept samples through the real SAE."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    marker = next(m for m in ("Snippets (the words to use are marked <<like this>>):\n",  # paper
                              "Where the theme shows in other texts (its key words marked <<like this>>):\n")  # agent
                  if m in user)
    lines = user.split(marker, 1)[1].splitlines()
    snippet = lines[0].split(". ", 1)[1].replace("<<", "").replace(">>", "")
    # its last words only (the span ends at the peak): a longer run of the anchor's text is
    # refused as a copy of it (facsynth.tools.quality.CopyIndex)
    snippet = " ".join(snippet.split()[-4:])
    keys = [k for k in body.get("response_format", {}).get("json_schema", {}).get("schema", {}).get("properties", {})]
    positive, negative = (keys + [POSITIVE, NEGATIVE])[:2]
    if "first_sample" in positive:  # the paper strategy's two samples
        return Reply(content=json.dumps({positive: f"{snippet} today", negative: f"Tell me: {snippet}"}))
    other = NEGATIVES[next(_calls) % len(NEGATIVES)]  # a new natural text each call: never a copy of the last
    # words after the snippet leave its activations as they are (the model reads left to right)
    # and end the request, which the end check wants (a text that stops at the snippet is cut off)
    return Reply(content=json.dumps({positive: f"Tell me about this: {snippet}. Thanks!", negative: other}))
