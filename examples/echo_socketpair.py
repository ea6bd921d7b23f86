"""The low-level socket API on tokioloop: an echo over a socketpair with sock_sendall/sock_recv.

    python examples/echo_socketpair.py
"""

import asyncio
import socket

import tokioloop


async def echo(loop, sock):
    while data := await loop.sock_recv(sock, 65536):
        await loop.sock_sendall(sock, data)


async def main():
    loop = asyncio.get_running_loop()
    client, server = socket.socketpair()
    for sock in (client, server):
        sock.setblocking(False)
    echo_task = loop.create_task(echo(loop, server))
    try:
        for message in (b"hello", b"tokio", b"loop"):
            await loop.sock_sendall(client, message)
            print("echoed", await loop.sock_recv(client, 65536))
    finally:
        client.close()
        await echo_task
        server.close()


if __name__ == "__main__":
    tokioloop.run(main())
