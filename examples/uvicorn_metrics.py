"""uvicorn on tokioloop, with the loop's telemetry on a Prometheus ``/metrics`` endpoint.

    pip install tokioloop uvicorn prometheus_client
    uvicorn examples.uvicorn_metrics:app --loop tokioloop:new_event_loop   # then GET /metrics
    python examples/uvicorn_metrics.py --serve --port 8000                 # the same, in-process

With no arguments it checks itself: serves on a free 127.0.0.1 port from a thread, fetches
``/`` and ``/metrics``, prints the loop's series and exits (CI runs it this way).

The app registers a collector for the loop it runs on at start-up (lifespan) and removes it at
shutdown; on a loop without telemetry (not tokioloop) ``/metrics`` is served empty.
"""

import argparse
import asyncio
import socket
import sys
import threading
import urllib.request

import prometheus_client
import uvicorn

from tokioloop.exporters import prometheus

registry = prometheus_client.CollectorRegistry()
collectors = []


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            loop = asyncio.get_running_loop()
            if hasattr(loop, "metrics"):
                collectors.append(prometheus.register(loop, name="uvicorn", registry=registry))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            while collectors:
                registry.unregister(collectors.pop())
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/metrics":
        body = prometheus_client.generate_latest(registry)
        content_type = prometheus_client.CONTENT_TYPE_LATEST
    else:
        body = b"hello from tokioloop\n"
        content_type = "text/plain"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type.encode())]})
    await send({"type": "http.response.body", "body": body})


def config(**kwargs):
    return uvicorn.Config(app, loop="tokioloop:new_event_loop", lifespan="on",
                          log_level="warning", **kwargs)


def self_check():
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(config())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.05)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/", timeout=10) as response:
            assert response.read() == b"hello from tokioloop\n"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    series = [line for line in text.splitlines()
              if line.startswith(("tokioloop_turns_total", "tokioloop_callbacks_total",
                                  "tokioloop_open{kind=\"tcp\""))]
    print("\n".join(series))
    if not any(line.startswith("tokioloop_turns_total") for line in series):
        sys.exit("no tokioloop series on /metrics")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve until interrupted")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.serve:
        uvicorn.Server(config(host="127.0.0.1", port=args.port)).run()
    else:
        self_check()


if __name__ == "__main__":
    main()
