#!/usr/bin/env python3
"""Drives Papervisor over QMP with the unmodified `qemu.qmp` client.

Usage: drive.py SOCKET STEP...
A STEP is a command name, or NAME=JSON-ARGUMENTS, or
  wait-event:NAME           the next event called NAME (30 s at most)
  events-for:SECONDS        every event received so far and within SECONDS
  repeat:N:STEP             runs a command step N times
Prints one JSON line per step: {"return": ...}, {"error": {"class", "desc"}},
{"event": ...}, {"events": [...]} or {"repeat": N, "errors": [classes]}.
Exits 3 if qemu.qmp is missing, 1 on a connection failure.
"""
import asyncio
import json
import sys

try:
    from qemu.qmp import ExecuteError, QMPClient
except ImportError:
    print("qemu.qmp is not installed: pip install qemu.qmp", file=sys.stderr)
    sys.exit(3)


async def run(socket, steps):
    client = QMPClient("papervisor-test")
    await client.connect(socket)
    events = client.events
    for step in steps:
        if step.startswith("events-for:"):
            seconds = float(step.split(":", 1)[1])
            received = []
            deadline = asyncio.get_running_loop().time() + seconds
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    event = await asyncio.wait_for(events.get(), timeout=left)
                except asyncio.TimeoutError:
                    break
                received.append({"event": event["event"], "data": event.get("data", {})})
            print(json.dumps({"events": received}), flush=True)
            continue
        if step.startswith("repeat:"):
            _, count, command = step.split(":", 2)
            name, _, arguments = command.partition("=")
            arguments = json.loads(arguments) if arguments else None
            errors = []
            for _ in range(int(count)):
                try:
                    await client.execute(name, arguments)
                except ExecuteError as error:
                    errors.append(error.error_class)
            print(json.dumps({"repeat": int(count), "errors": errors}), flush=True)
            continue
        if step.startswith("wait-event:"):
            name = step.split(":", 1)[1]
            event = await asyncio.wait_for(events.get(), timeout=30)
            while event["event"] != name:
                event = await asyncio.wait_for(events.get(), timeout=30)
            print(json.dumps({"event": event["event"], "data": event.get("data", {})}), flush=True)
            continue
        name, _, arguments = step.partition("=")
        arguments = json.loads(arguments) if arguments else None
        try:
            result = await client.execute(name, arguments)
            print(json.dumps({"return": result}), flush=True)
        except ExecuteError as error:
            print(json.dumps({"error": {"class": error.error_class, "desc": str(error)}}), flush=True)
    try:
        await client.disconnect()
    except Exception:  # the VM may be gone after quit
        pass


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(run(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
