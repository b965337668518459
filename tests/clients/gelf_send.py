"""Sends GELF to a Sluice agent the ways real senders do.

  gelf_send.py HOST UDP_PORT TCP_PORT

- graypy (a GELF library for Python's logging) over UDP: zlib-compressed, and chunked (its chunk
  size set small so a long message takes many chunks);
- a datagram as Docker's gelf logging driver makes one (go-gelf): the driver's fields, gzip;
  and the same message chunked as go-gelf chunks it (1420-byte chunks, 12-byte headers);
- graypy over TCP: null-delimited JSON frames.
"""

import gzip
import json
import logging
import os
import socket
import struct
import sys
import time

import graypy


def docker_message(text):
    """The fields Docker's gelf driver sends for a container's line."""
    return {
        "version": "1.1",
        "host": "docker-host",
        "short_message": text,
        "timestamp": 1795437600.25,
        "level": 6,
        "_command": "nginx -g daemon off;",
        "_container_id": "4a3c9f1e2b7d6c5a8e0f1d2c3b4a59687f6e5d4c3b2a1908f7e6d5c4b3a29180",
        "_container_name": "web",
        "_created": "2026-11-20T08:00:00.000000000Z",
        "_image_id": "sha256:abc",
        "_image_name": "nginx:1.25",
        "_tag": "4a3c9f1e2b7d",
    }


def go_gelf_chunks(payload, chunk_size=1420):
    """go-gelf's chunking: magic, 8-byte id, sequence, count, then the data."""
    data_size = chunk_size - 12
    parts = [payload[i : i + data_size] for i in range(0, len(payload), data_size)]
    message_id = os.urandom(8)
    return [b"\x1e\x0f" + message_id + struct.pack("BB", i, len(parts)) + part for i, part in enumerate(parts)]


def main():
    host, udp_port, tcp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    log = logging.getLogger("gelf-test")
    log.setLevel(logging.DEBUG)
    log.propagate = False

    chunker = graypy.handler.GELFWarningChunker(chunk_size=200)
    udp = graypy.GELFUDPHandler(host, udp_port, gelf_chunker=chunker, localname="graypy-host")
    log.addHandler(udp)
    log.warning("graypy udp short")
    log.error("graypy udp long " + "x" * 5000)
    log.removeHandler(udp)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(gzip.compress(json.dumps(docker_message("docker gzip line")).encode()), (host, udp_port))
    big = gzip.compress(json.dumps(docker_message("docker chunked " + os.urandom(3000).hex())).encode())
    for chunk in go_gelf_chunks(big):
        sock.sendto(chunk, (host, udp_port))
    sock.sendto(b"\x1f\x8bnot really gzip", (host, udp_port))
    sock.sendto(b"{not json", (host, udp_port))

    tcp = graypy.GELFTCPHandler(host, tcp_port, localname="graypy-host")
    log.addHandler(tcp)
    log.info("graypy tcp one")
    log.info("graypy tcp two")
    tcp.close()
    time.sleep(0.2)
    print("sent")


if __name__ == "__main__":
    main()
