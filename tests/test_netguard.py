import socket
import subprocess
import sys

import pytest


def test_outside_connection_refused_in_process():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(OSError, match="blocked by the test suite"):
        s.connect(("1.1.1.1", 443))
    s.close()


def test_name_resolution_refused_in_process():
    with pytest.raises(OSError, match="blocked by the test suite"):
        socket.getaddrinfo("huggingface.co", 443)


def test_outside_connection_refused_in_subprocess():
    code = (
        "import urllib.request\n"
        "try:\n"
        "    urllib.request.urlopen('https://huggingface.co', timeout=5)\n"
        "except OSError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "blocked by the test suite" in out


def test_loopback_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket()
    client.connect(server.getsockname())
    client.close()
    server.close()
