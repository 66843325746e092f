"""The process that times models (run as a script by evaluate/timer.py; imports nothing of autoquant).

Every session in it shares one onnxruntime thread pool (`set_global_thread_pool_sizes`). Sessions with pools of
their own, timed alternately on a loaded machine, do not get the same share of the cores: the operating system
favours some pools' threads over others for as long as they live, and two sessions of one model read steadily
apart (benchmarks/latency_trust.py measures it). With one pool, every model runs on the same threads. A process of
its own because onnxruntime allows a global pool only when no session in the process has a pool of its own, and
autoquant's other sessions (onnxruntime's quantization tooling among them) do.

Protocol on stdin/stdout: length-prefixed pickles; one reply per request.
"""

from __future__ import annotations

import pickle
import signal
import struct
import sys
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import _pybind_state


def read(stream):
    head = stream.read(8)
    if len(head) < 8:
        return None
    return pickle.loads(stream.read(struct.unpack("<Q", head)[0]))


def write(stream, value) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def serve(threads: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent ends this process (closing its stdin) on its
    # way out, without a second traceback from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _pybind_state.set_global_thread_pool_sizes(threads, 1)
    sessions: dict[str, ort.InferenceSession] = {}
    feed: dict[str, np.ndarray] = {}
    rounds = 0
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (request := read(stdin)) is not None:
        kind = request[0]
        try:
            if kind == "load":  # (load, key, model bytes)
                opts = ort.SessionOptions()
                opts.use_per_session_threads = False
                opts.log_severity_level = 3
                sessions[request[1]] = ort.InferenceSession(request[2], opts, providers=["CPUExecutionProvider"])
                reply = None
            elif kind == "drop":
                sessions.pop(request[1], None)
                reply = None
            elif kind == "feed":
                feed = request[1]
                reply = None
            elif kind == "warm":  # one untimed run of each: a session's first run allocates
                for key in request[1]:
                    sessions[key].run(None, feed)
                reply = None
            elif kind == "round":  # one timed run of each, the order rotated from round to round
                keys = request[1]
                reply = [0.0] * len(keys)
                for i in [(rounds + j) % len(keys) for j in range(len(keys))]:
                    t0 = time.perf_counter()
                    sessions[keys[i]].run(None, feed)
                    reply[i] = (time.perf_counter() - t0) * 1000.0
                rounds += 1
            else:
                raise ValueError(f"unknown request {kind!r}")
            write(stdout, ("ok", reply))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's error types: the parent reports them
            write(stdout, ("error", f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"))


if __name__ == "__main__":
    serve(int(sys.argv[1]))
